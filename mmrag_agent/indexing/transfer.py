"""Move an index between stores (embedded <-> server, machine <-> machine) as one portable file.

The file is JSON Lines (gzip-compressed when its name ends in ``.gz``): a header with the index metadata and
the collections' dimensions, one line per point (collection, id, vector as base64 little-endian float32,
payload), and an end line with the counts, so a cut file is detected. Nothing in it is code; every line is
checked on import (one-line error naming the line), and memory stays bounded by the batch size.

Import attaches the index to a folder: the recorded root and each point's absolute paths are rewritten for
that folder from the points' relative paths (which must stay inside it).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
import os
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from tqdm.auto import tqdm

from .store import INDEX_FORMAT_VERSION, IndexStore, RawPoint, StoreError, _meta_problem

EXPORT_FORMAT = "mmrag-index-export"
EXPORT_VERSION = 1
_MAX_LINE = 64 * 2**20
_STORE_ONLY_KEYS = ("store_format", "store_path", "points")
_SHORT = {"text": "text_collection", "images": "image_collection"}


@dataclass
class TransferReport:
    """Points moved per collection (``text``, ``images``)."""

    points: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.points.values())


def _open(path: Path, mode: str, compressed: bool) -> IO[bytes]:
    return gzip.open(path, mode + "b") if compressed else open(path, mode + "b")


def _vector_text(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def export_index(store: IndexStore, path: str | Path, show_progress: bool = True) -> TransferReport:
    """Write the index in ``store`` to ``path`` (atomically: a failed export leaves no file behind).

    Args:
        store: The open store (embedded or server).
        path: The export file (``.jsonl`` or ``.jsonl.gz``).
        show_progress: Show a progress bar.

    Returns:
        The points written per collection.

    Example:
        >>> export_index(open_store("docs/.mmrag"), "docs-index.jsonl.gz")
    """
    path = Path(path)
    meta = store.read_meta()
    if meta is None:
        raise StoreError(f"no index with collection prefix {store.prefix!r} in {store.location}; nothing to export")
    counts = {short: store.count(getattr(store, attr)) for short, attr in _SHORT.items()}
    header = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "meta": {k: v for k, v in meta.items() if k not in _STORE_ONLY_KEYS},
              "collections": {"text": {"dim": meta["text_dim"], "points": counts["text"]},
                              "images": {"dim": meta["image_dim"], "points": counts["images"]}}}
    partial = path.with_name(path.name + ".partial")
    report = TransferReport({short: 0 for short in _SHORT})
    progress = tqdm(total=sum(counts.values()), desc="exporting", unit="point", disable=not show_progress)
    try:
        with _open(partial, "w", path.name.endswith(".gz")) as out:
            out.write(json.dumps(header).encode() + b"\n")
            for short, attr in _SHORT.items():
                for point in store.iter_points(getattr(store, attr), with_vectors=True, batch_size=512):
                    line = {"c": short, "id": point.id, "v": _vector_text(point.vector or []), "p": point.payload}
                    out.write(json.dumps(line).encode() + b"\n")
                    report.points[short] += 1
                    progress.update(1)
            out.write(json.dumps({"end": True, "points": report.points}).encode() + b"\n")
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"cannot write {path} ({exc.strerror or exc}); choose a writable path with enough space") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        progress.close()
    return report


def import_index(path: str | Path, store: IndexStore, root: str | Path, show_progress: bool = True,
                 batch_size: int = 256) -> TransferReport:
    """Load the export file ``path`` into ``store`` (which must hold no index) as the index of the folder ``root``.

    Args:
        path: An export file written by :func:`export_index`.
        store: The open target store, without an index for its prefix.
        root: The folder the index belongs to from now on (absolute paths in the points are rewritten for it).
        show_progress: Show a progress bar.
        batch_size: Points per write.

    Returns:
        The points imported per collection.

    Raises:
        StoreError: the file is not an export, or line N is invalid (the partial import is removed), or the store
            already holds an index.

    Example:
        >>> import_index("docs-index.jsonl.gz", open_store("docs/.mmrag", create=True), "docs/")
    """
    path, root = Path(path), Path(os.path.abspath(root))
    if store.read_meta() is not None:
        raise StoreError(f"{store.location} already holds an index with collection prefix {store.prefix!r}; pass --rebuild to "
                         "replace it, or import into another --store / --collection")
    try:
        handle = _open(path, "r", _is_gzip(path))
    except OSError as exc:
        raise StoreError(f"cannot read {path} ({exc.strerror or exc})") from None
    report = TransferReport({short: 0 for short in _SHORT})
    started = False
    try:
        with handle:
            lines = _numbered_lines(handle, path)
            number, header = next(lines, (1, None))
            dims = _check_header(header, path)
            meta = dict(header["meta"]) | {"root": str(root), "format_version": INDEX_FORMAT_VERSION}
            started = True
            store.ensure_collections(dims["text"], dims["images"])
            store.write_meta(meta)
            expected = sum(header["collections"][short]["points"] for short in _SHORT)
            progress = tqdm(total=expected, desc="importing", unit="point", disable=not show_progress)
            try:
                batches: dict[str, list[RawPoint]] = {short: [] for short in _SHORT}
                end = None
                for number, record in lines:
                    if end is not None:
                        raise StoreError(f"{path} line {number}: data after the end line")
                    if isinstance(record, dict) and record.get("end") is True:
                        end = record
                        continue
                    short, point = _check_point(record, dims, root, f"{path} line {number}")
                    batches[short].append(point)
                    report.points[short] += 1
                    if len(batches[short]) >= batch_size:
                        store.upsert_points(getattr(store, _SHORT[short]), batches[short])
                        progress.update(len(batches[short]))
                        batches[short] = []
                for short, batch in batches.items():
                    store.upsert_points(getattr(store, _SHORT[short]), batch)
                    progress.update(len(batch))
            finally:
                progress.close()
            if end is None:
                raise StoreError(f"{path} ends at line {number} without its end line (the file was cut short)")
            if end.get("points") != report.points:
                raise StoreError(f"{path}: the end line counts {end.get('points')} points but the file holds {report.points}")
            store.finish()
    except StoreError as exc:
        if started:
            store.drop()
            raise StoreError(f"{exc}; the partial import was removed, nothing else changed") from None
        raise
    except (OSError, EOFError, zlib.error) as exc:
        if started:
            store.drop()
        raise StoreError(f"cannot read {path} ({getattr(exc, 'strerror', None) or exc}); the partial import was removed") from None
    return report


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _numbered_lines(handle: IO[bytes], path: Path) -> Iterator[tuple[int, object]]:
    number = 0
    while True:
        raw = handle.readline(_MAX_LINE + 1)
        if not raw:
            return
        number += 1
        if len(raw) > _MAX_LINE:
            raise StoreError(f"{path} line {number}: longer than {_MAX_LINE // 2**20} MiB; not an mmrag export")
        try:
            yield number, json.loads(raw.decode("utf-8"), parse_int=_bounded_int, parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise StoreError(f"{path} line {number}: not valid JSON ({' '.join(str(exc).split())[:100]})") from None


def _bounded_int(text: str) -> int:
    if len(text) > 19:
        raise ValueError(f"integer with {len(text)} digits")
    return int(text)


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _check_header(header: object, path: Path) -> dict[str, int]:
    where = f"{path} line 1"
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise StoreError(f"{where}: not an mmrag index export (write one with `mmrag export`)")
    version = header.get("version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise StoreError(f"{where}: export version {version!r} is not supported by this mmrag-agent; upgrade it")
    problem = _meta_problem(header.get("meta"))
    if problem:
        raise StoreError(f"{where}: the index metadata is invalid ({problem})")
    collections = header.get("collections")
    dims = {}
    for short in _SHORT:
        entry = collections.get(short) if isinstance(collections, dict) else None
        dim = entry.get("dim") if isinstance(entry, dict) else None
        if not isinstance(dim, int) or not 0 < dim <= 65536 or not isinstance(entry.get("points"), int):
            raise StoreError(f"{where}: collections.{short} needs an integer dim (1..65536) and points")
        dims[short] = dim
    return dims


def _check_point(record: object, dims: dict[str, int], root: Path, where: str) -> tuple[str, RawPoint]:
    if not isinstance(record, dict):
        raise StoreError(f"{where}: not a point (a JSON object with c, id, v, p)")
    short = record.get("c")
    if short not in dims:
        raise StoreError(f"{where}: field c must be 'text' or 'images', not {short!r}")
    try:
        point_id = str(uuid.UUID(str(record.get("id"))))
    except ValueError:
        raise StoreError(f"{where}: field id is not a UUID") from None
    try:
        raw = base64.b64decode(record.get("v") or "", validate=True)
    except (binascii.Error, TypeError):
        raise StoreError(f"{where}: field v is not base64") from None
    if len(raw) != 4 * dims[short]:
        raise StoreError(f"{where}: the vector has {len(raw) // 4} dimensions, the {short} collection {dims[short]}")
    vector = list(struct.unpack(f"<{dims[short]}f", raw))
    if not all(math.isfinite(x) for x in vector):
        raise StoreError(f"{where}: the vector holds NaN or infinity")
    payload = record.get("p")
    if not isinstance(payload, dict) or not isinstance(payload.get("_node_content"), str):
        raise StoreError(f"{where}: field p must be a payload object with _node_content")
    rel = payload.get("rel_path")
    if not isinstance(rel, str) or not _inside(rel):
        raise StoreError(f"{where}: payload rel_path {rel!r} is not a relative path inside the folder")
    try:
        return short, RawPoint(point_id, vector, _rehomed(payload, root / rel))
    except (ValueError, RecursionError):
        raise StoreError(f"{where}: payload _node_content is not valid JSON") from None


def _inside(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return bool(parts) and not rel.startswith("/") and "\\" not in rel and "\x00" not in rel and ".." not in parts


def _rehomed(payload: dict, file_path: Path) -> dict:
    """The payload with its absolute paths (metadata ``file_path``, an image node's ``image_path``) set to ``file_path``."""
    payload = dict(payload)
    if "file_path" in payload:
        payload["file_path"] = str(file_path)
    node = json.loads(payload["_node_content"])
    if isinstance(node, dict):
        if isinstance(node.get("metadata"), dict) and "file_path" in node["metadata"]:
            node["metadata"]["file_path"] = str(file_path)
        if node.get("image_path"):
            node["image_path"] = str(file_path)
        payload["_node_content"] = json.dumps(node, ensure_ascii=False)
    return payload
