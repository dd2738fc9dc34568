"""Group the nodes of the files to index into batches bounded by chunks, bytes and files.

A batch holds at most ``max_chunks`` nodes and about ``max_bytes`` of node text and model input, whatever the
files: a large file's chunks are spread over as many batches as needed, and an image's pixels are turned into
the model's (small) input and dropped as soon as it is read. A file counts as done in the batch that holds
its last node; only then does the indexer delete the file's stale points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from ..media import ImageRejected
from .discovery import FileFailure
from .nodes import NodeFactory, PreparedFile
from .readers import FileRejected, short_error

#: Rough per-node memory besides its text: metadata, relationships and, once embedded, the vector.
NODE_OVERHEAD_BYTES = 16 << 10


@dataclass
class Batch:
    """Nodes ready to embed and write, and the bookkeeping of the files they come from."""

    text_nodes: list = field(default_factory=list)
    image_nodes: list = field(default_factory=list)
    image_inputs: list = field(default_factory=list)  # one model input per image node (or None)
    failed: list[FileFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    done: list[tuple[str, set[str]]] = field(default_factory=list)  # (file, all its new point ids)
    files: set[str] = field(default_factory=set)
    nbytes: int = 0
    progress_bytes: int = 0  # input bytes this batch completes (for the progress bar)

    @property
    def chunks(self) -> int:
        return len(self.text_nodes) + len(self.image_nodes)

    def __bool__(self) -> bool:
        return bool(self.chunks or self.failed or self.done or self.progress_bytes)


class BatchBuilder:
    """Turn prepared files into :class:`Batch` es (CPU work only: no model call, no store write).

    Args:
        factory: Builds the nodes of one file.
        image_side: Longest side images are decoded at for the image model (None: the model reads no pixels).
        to_input: ``to_input(pil_image)`` -> the image model's input for one image (None: no pixels needed).
        max_chunks: Nodes per batch.
        max_bytes: Approximate bytes of node text and model input per batch.
        max_files: Files per batch.
        on_read: Called with the number of bytes read from a large text file as it is chunked.
    """

    def __init__(self, factory: NodeFactory, image_side: int | None, to_input: Callable[[Any], Any] | None,
                 max_chunks: int = 256, max_bytes: int = 32 << 20, max_files: int = 64,
                 on_read: Callable[[int], None] | None = None) -> None:
        self.factory, self.image_side, self.to_input = factory, image_side, to_input
        self.max_chunks, self.max_bytes, self.max_files = max(1, max_chunks), max(1, max_bytes), max(1, max_files)
        self.on_read = on_read

    def batches(self, todo: Sequence[PreparedFile]) -> Iterator[Batch]:
        """Yield the batches of ``todo``'s nodes, in file order."""
        batch = Batch()
        for item in todo:
            if batch.files and len(batch.files) >= self.max_files:
                yield batch
                batch = Batch()
            rel = item.found.rel
            batch.files.add(rel)
            ids: set[str] = set()
            reported = 0
            for node, model_input, share, last in self._nodes(item, batch):
                if node is None:  # the file failed (its nodes so far are written, but it is not done)
                    batch.progress_bytes += item.found.size - reported
                    break
                (batch.image_nodes if model_input is not _TEXT else batch.text_nodes).append(node)
                if model_input is not _TEXT:
                    batch.image_inputs.append(model_input)
                batch.nbytes += _size(node, model_input)
                batch.progress_bytes += share
                reported += share
                ids.add(node.node_id)
                if last:
                    batch.done.append((rel, ids))
                    batch.warnings.extend(f"{rel}: {warning}" for warning in item.warnings)
                if batch.chunks >= self.max_chunks or batch.nbytes >= self.max_bytes:
                    yield batch
                    batch = Batch(files={rel} if not last else set())
        if batch:
            yield batch

    def _nodes(self, item: PreparedFile, batch: Batch) -> Iterator[tuple[Any, Any, int, bool]]:
        """``(node, model input or _TEXT, progress share, is last)``; ``(None, ...)`` after recording a failure."""
        size = item.found.size
        try:
            if item.found.kind == "image":
                node, model_input = self.factory.image_node(item, self.image_side, self.to_input)
                yield node, model_input, size, True
                return
            spool = self.factory.text_chunks(item, on_bytes=self.on_read)
            try:
                total = spool.count
                for index, (chunk, extra) in enumerate(spool):
                    share = size * (index + 1) // total - size * index // total
                    yield self.factory.text_node(item, index, total, chunk, extra), _TEXT, share, index == total - 1
            finally:
                spool.close()
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
            batch.failed.append(FileFailure(item.found.rel, failure_reason(exc)))
            yield None, None, 0, True


_TEXT = object()


def _size(node, model_input) -> int:
    if model_input is _TEXT:
        return len(node.text) + NODE_OVERHEAD_BYTES
    nbytes = getattr(model_input, "nbytes", None)  # a tensor or array
    if nbytes is None and hasattr(model_input, "getbuffer"):
        nbytes = model_input.getbuffer().nbytes  # PNG bytes
    return int(nbytes or 0) + len(node.text) + NODE_OVERHEAD_BYTES


def failure_reason(exc: BaseException) -> str:
    """The one-line reason (with the fix) reported for a file that failed with ``exc``."""
    if isinstance(exc, (FileRejected, ImageRejected)):
        return str(exc)
    if isinstance(exc, TimeoutError):  # e.g. the sentence splitter's guarded regular expressions
        return f"text could not be split into sentences in time ({short_error(exc, 120)}); re-export or remove the file"
    if isinstance(exc, FileNotFoundError):
        return "file disappeared while being indexed; it will be removed from the index on the next run"
    if isinstance(exc, PermissionError):
        return "permission denied; make the file readable by this user"
    if isinstance(exc, OSError):
        return f"cannot be read ({exc.strerror or short_error(exc)})"
    if isinstance(exc, MemoryError):
        return "not enough memory to read this file; its earlier points are kept"
    if isinstance(exc, RecursionError):
        return "too deeply nested to read; re-export or remove the file"
    return f"could not be read ({type(exc).__name__}: {short_error(exc)}); re-export or remove the file"
