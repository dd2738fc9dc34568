"""Incremental, resumable indexing of a folder into Qdrant (embedded Qdrant Edge or a server), and loading it back.

The store itself is the record of what is indexed: every point carries its file's relative path, a content
key and its chunk number, and its id is derived from those three. A run compares that with the folder:

* unchanged file (same key, every chunk present): nothing is embedded or written;
* new or changed file: its new points are written first, then its stale points are deleted;
* deleted file: its points are deleted;
* a file that fails: reported with the reason, and its earlier points are kept;
* a folder that cannot be listed, or a link whose target is missing: reported as unavailable, and every
  point under it is kept.

A run killed at any point leaves only complete old files, complete new files and partial new files; the
next run finishes the partial ones and removes the stale points, ending with exactly the right points.
Memory is bounded by the batch limits (chunks, bytes, files), not by the size of any file.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.embeddings.multi_modal_base import MultiModalEmbedding
from llama_index.core.indices.multi_modal import MultiModalVectorStoreIndex
from llama_index.core.schema import BaseNode, MetadataMode
from tqdm.auto import tqdm

from .batches import Batch, BatchBuilder, failure_reason
from .discovery import FileFailure, FoundFile, discover
from .embeddings import (
    ClipEmbedding,
    SurrogateTextImageEmbedding,
    embedding_window,
    model_identity,
    resolve_image_embedding,
    resolve_text_embedding,
)
from ..media import DEFAULT_MAX_IMAGE_PIXELS, image_to_png_bytes
from .nodes import NodeFactory, PreparedFile, prepare_file
from .ocr import load_ocr
from .store import DEFAULT_STORE_DIRNAME, INDEX_FORMAT_VERSION, IndexStore, StoreError
from .stores import open_store
from .surrogates import reference_text

logger = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What one indexing run did. ``failed`` lists every file not indexed, with the reason."""

    indexed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[FileFailure] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, same content as)
    warnings: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)  # folders/links not looked into: their points are kept
    ignored: int = 0
    text_points: int = 0
    image_points: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{len(self.indexed)} indexed, {len(self.unchanged)} unchanged, {len(self.removed)} removed, "
                f"{len(self.failed)} failed, {len(self.duplicates)} duplicate(s) skipped; "
                f"{self.text_points} text and {self.image_points} image points in {self.seconds:.1f} s")


def default_store(folder: str | Path) -> Path:
    """The store used when none is given: ``<folder>/.mmrag``."""
    return Path(folder) / DEFAULT_STORE_DIRNAME


class FolderIndexer:
    """Index a folder of text, Markdown, HTML, PDF and image files into a multimodal Qdrant index.

    Args:
        folder: The folder to index (recursively).
        store: Embedded store folder (Qdrant Edge shards); default ``<folder>/.mmrag``. Ignored when ``qdrant_url``
            is set. A store belongs to one folder: indexing another folder into it is refused.
        qdrant_url: URL of a Qdrant server, e.g. ``http://localhost:6333``.
        qdrant_api_key: API key for the server.
        collection: Collection-name prefix (``<prefix>_text``, ``<prefix>_images``, ``<prefix>_meta``).
        text_model: A LlamaIndex ``BaseEmbedding``, ``"minilm"``, or a sentence-transformers id / directory.
        image_model: A ``MultiModalEmbedding``, ``"auto"`` (CLIP if loadable, else image-as-text), ``"text"``
            (image-as-text), or a CLIP hub id / directory.
        device: Torch device for the embedding models.
        dtype: CLIP dtype.
        embed_batch_size: Texts or images per embedding forward pass.
        chunk_size: Tokens per text chunk. Default: the text model's window, counted with its own tokenizer
            (longer chunks would be silently truncated when embedded); 512 tiktoken tokens for other models.
        chunk_overlap: Tokens shared by consecutive chunks (default: chunk_size // 8).
        max_image_pixels: Refuse images declaring more pixels (decompression-bomb guard).
        ocr: ``"auto"`` (OCR images and scanned PDF pages when the ``ocr`` extra is installed), ``"on"``, ``"off"``.
        files_per_batch: At most this many files' points are embedded and written together.
        max_batch_chunks: At most this many chunks (text chunks and images) per batch.
        max_batch_bytes: About this many bytes of chunk text and image-model input per batch.
        image_side: Longest side images are decoded at for a pixel-based image model (JPEGs decode directly at
            a reduced scale); the model resizes to its own input size anyway.
        rebuild: Drop the existing index first, without reading it (needed to switch embedding models, to replace
            a store of an earlier version, or to recover a damaged one).
        show_progress: Show a progress bar.
        on_file_done: Called with each file's relative path once its points are committed.

    Example:
        >>> report = FolderIndexer("docs/").run()
        >>> index = FolderIndexer("docs/").load()  # a MultiModalVectorStoreIndex
    """

    def __init__(
        self,
        folder: str | Path,
        store: str | Path | None = None,
        qdrant_url: str | None = None,
        qdrant_api_key: str | None = None,
        collection: str = "mmrag",
        text_model: str | BaseEmbedding = "minilm",
        image_model: str | MultiModalEmbedding = "auto",
        device: str = "cpu",
        dtype: str = "float32",
        embed_batch_size: int = 64,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        ocr: str = "auto",
        files_per_batch: int = 64,
        max_batch_chunks: int = 256,
        max_batch_bytes: int = 32 << 20,
        image_side: int = 1024,
        rebuild: bool = False,
        show_progress: bool = True,
        on_file_done: Callable[[str], None] | None = None,
    ) -> None:
        self.root = Path(folder).absolute()
        if not self.root.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder; pass the folder of documents to index")
        self.store_path = None if qdrant_url else Path(store).absolute() if store else default_store(self.root)
        self.store: IndexStore = open_store(self.store_path, qdrant_url, qdrant_api_key, collection, create=True, rebuild=rebuild)
        self.store.show_progress = show_progress
        meta = self.store.read_meta()
        if meta is not None:
            self.store.check_owner(self.root, meta)  # never index a folder into another folder's index
        self.text_model = resolve_text_embedding(text_model, device=device, batch_size=embed_batch_size)
        if image_model == "auto" and meta is not None:  # keep what the existing index was built with
            image_model = "text" if meta.get("image_mode") == "surrogate" else meta["image_model"]
        self.image_model = resolve_image_embedding(image_model, self.text_model, device=device, dtype=dtype, batch_size=embed_batch_size)
        self.factory = self._node_factory(chunk_size, chunk_overlap, max_image_pixels, load_ocr(ocr))
        self.files_per_batch, self.max_batch_chunks, self.max_batch_bytes = files_per_batch, max_batch_chunks, max_batch_bytes
        self.image_side = image_side
        self.show_progress = show_progress
        self.on_file_done = on_file_done
        self._check_or_write_meta()

    def _node_factory(self, chunk_size, chunk_overlap, max_image_pixels, ocr) -> NodeFactory:
        window = embedding_window(self.text_model)
        tokenizer, tokenizer_name = None, "tiktoken"
        if window is not None:
            limit, tokenizer = window
            tokenizer_name = model_identity(self.text_model)
            if chunk_size is not None and chunk_size > limit:
                logger.warning("chunk_size=%d exceeds the %d tokens %s embeds; the rest of each chunk is ignored when embedding",
                               chunk_size, limit, tokenizer_name)
            chunk_size = chunk_size or limit
        chunk_size = chunk_size or 512
        overlap = chunk_overlap if chunk_overlap is not None else chunk_size // 8
        return NodeFactory(self.root, chunk_size, overlap, max_image_pixels, ocr, tokenizer=tokenizer, tokenizer_name=tokenizer_name)

    # ---------------------------------------------------------------------------------------- meta
    def _check_or_write_meta(self) -> None:
        wanted = {"text_model": model_identity(self.text_model), "image_model": model_identity(self.image_model)}
        meta = self.store.read_meta()
        if meta is not None:
            for key, value in wanted.items():
                if meta.get(key) != value:
                    raise StoreError(
                        f"the index in {self.store.location} was built with {key}={meta.get(key)!r}, "
                        f"not {value!r}; pass the same model, or rebuild=True / --rebuild to re-embed everything"
                    )
            return
        text_dim = len(self.text_model.get_text_embedding("dimension probe"))
        image_dim = len(self.image_model.get_text_embedding("dimension probe"))
        self.store.ensure_collections(text_dim, image_dim)
        image_mode = "surrogate" if isinstance(self.image_model, SurrogateTextImageEmbedding) else "pixels"
        self.store.write_meta(wanted | {"format_version": INDEX_FORMAT_VERSION, "root": str(self.root),
                                        "text_dim": text_dim, "image_dim": image_dim, "image_mode": image_mode})

    # ----------------------------------------------------------------------------------------- run
    def run(self) -> IndexReport:
        """Bring the store in line with the folder and return what was done.

        One bad file never stops the run: whatever fails while reading, decoding or parsing a file is reported
        against it in ``failed``, and the store keeps that file's earlier points.
        """
        started = time.perf_counter()
        report = IndexReport()
        progress = tqdm(desc="finding files", unit=" entries", disable=not self.show_progress, dynamic_ncols=True)
        try:
            found = discover(self.root, exclude=(self.store_path,) if self.store_path else (), on_entry=progress.update)
            report.failed.extend(found.failures)
            report.ignored, report.unavailable = found.ignored, found.unavailable
            _bytes_bar(progress, "checking", sum(f.size for f in found.files))
            prepared = self._prepare(found.files, report, progress)
            states = self.store.file_states()
            canonical: dict[str, str] = {}
            todo: list[PreparedFile] = []
            for item in prepared:
                rel = item.found.rel
                first = canonical.setdefault(item.sha256, rel)
                if first != rel:
                    report.duplicates.append((rel, first))
                    continue
                state = states.get(rel)
                if state and state.content_keys == {item.content_key} and state.is_complete(item.content_key):
                    report.unchanged.append(rel)
                else:
                    todo.append(item)
            _bytes_bar(progress, "indexing", sum(item.found.size for item in todo))
            self._index(todo, states, report, progress)
        finally:
            progress.close()
        duplicates = dict(report.duplicates)
        keep = {p.found.rel for p in prepared if p.found.rel not in duplicates} | {f.path for f in report.failed if f.keeps_points}
        unavailable = set(found.unavailable)
        gone = sorted(rel for rel in states if rel not in keep and not _under(rel, unavailable))
        self.store.delete_ids(id_ for rel in gone for id_ in states[rel].ids)
        report.removed = [rel for rel in gone if rel not in duplicates]
        self.store.finish()
        report.text_points = self.store.count(self.store.text_collection)
        report.image_points = self.store.count(self.store.image_collection)
        report.seconds = time.perf_counter() - started
        return report

    def _prepare(self, files: Sequence[FoundFile], report: IndexReport, progress) -> list[PreparedFile]:
        """Hash every file (streamed), read Markdown/HTML image references, then compute content keys."""
        prepared, references = [], {}
        cached = 0  # bytes of small parsed Markdown/HTML kept for the second pass
        for found in files:
            before = progress.n
            try:
                item = prepare_file(found, self.root, on_bytes=progress.update)
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
                report.failed.append(FileFailure(found.rel, failure_reason(exc)))
                progress.update(max(0, found.size - (progress.n - before)))
                continue
            if item.parsed is not None:
                cached += found.size
                if cached > PARSE_CACHE_BYTES:
                    item.parsed = None  # parsed again when indexed
            for ref in item.image_references:
                references.setdefault(ref.target, []).append(ref)
            item.image_references = []
            prepared.append(item)
        for item in prepared:
            if item.found.kind == "image":
                item.references_text = reference_text(references.get(item.found.rel, ()))
            item.content_key = self.factory.key_for(item)
        return prepared

    def _index(self, todo: list[PreparedFile], states: dict, report: IndexReport, progress) -> None:
        """Embed and write ``todo`` batch by batch; the next batch is read, parsed and decoded meanwhile."""
        builder = BatchBuilder(self.factory, *self._image_input(), max_chunks=self.max_batch_chunks,
                               max_bytes=self.max_batch_bytes, max_files=self.files_per_batch,
                               on_read=_ReadMeter(progress))
        batches = builder.batches(todo)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmrag-prefetch") as prefetch:
            upcoming = prefetch.submit(next, batches, None)
            while (work := upcoming.result()) is not None:
                upcoming = prefetch.submit(next, batches, None)  # at most one batch is built ahead
                self._commit_batch(work, states, report, progress)

    def _image_input(self) -> tuple[int | None, Callable | None]:
        """The decode size and per-image input function of the image model (None, None: it reads no pixels)."""
        model = self.image_model
        if isinstance(model, SurrogateTextImageEmbedding):
            return None, None
        if isinstance(model, ClipEmbedding):
            return self.image_side, lambda image: model.preprocess([image])
        return self.image_side, image_to_png_bytes

    def _commit_batch(self, work: Batch, states: dict, report: IndexReport, progress) -> None:
        """Embed and write one batch, then, for each file it completes, delete that file's stale points."""
        report.failed.extend(work.failed)
        report.warnings.extend(work.warnings)
        self._embed_text(work.text_nodes)
        self._embed_images(work.image_nodes, work.image_inputs)
        for nodes, collection in ((work.text_nodes, self.store.text_collection), (work.image_nodes, self.store.image_collection)):
            if nodes:
                self.store.vector_store(collection).add(nodes)
        for rel, new_ids in work.done:
            old = states.get(rel)
            if old:
                self.store.delete_ids(old.ids - new_ids)
            report.indexed.append(rel)
            if self.on_file_done:
                self.on_file_done(rel)
        progress.update(work.progress_bytes)
        progress.set_postfix_str(f"{len(report.indexed)} files done", refresh=False)

    def _embed_text(self, nodes: list[BaseNode]) -> None:
        texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        for node, embedding in zip(nodes, self.text_model.get_text_embedding_batch(texts) if texts else []):
            node.embedding = embedding

    def _embed_images(self, nodes: list[BaseNode], inputs: list) -> None:
        if not nodes:
            return
        model = self.image_model
        if isinstance(model, SurrogateTextImageEmbedding):
            embeddings = model.get_text_embedding_batch([n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes])
        elif isinstance(model, ClipEmbedding):
            import torch

            embeddings = model.embed_pixel_values(torch.cat(inputs))
        else:
            embeddings = model.get_image_embedding_batch(inputs)
        for node, embedding in zip(nodes, embeddings):
            node.embedding = embedding

    # ---------------------------------------------------------------------------------------- load
    def load(self) -> MultiModalVectorStoreIndex:
        """The indexed folder as a LlamaIndex ``MultiModalVectorStoreIndex`` over the Qdrant collections."""
        return _as_index(self.store, self.text_model, self.image_model)


#: Bytes of small Markdown/HTML files whose first-pass parse is kept for the second pass (the rest is re-parsed).
PARSE_CACHE_BYTES = 32 << 20


def _under(rel: str, prefixes: set[str]) -> bool:
    """Whether ``rel`` is one of ``prefixes`` or lies under one ("" stands for the whole folder)."""
    if not prefixes:
        return False
    parts = rel.split("/")
    return any("/".join(parts[:i]) in prefixes for i in range(len(parts) + 1))


def _bytes_bar(progress, description: str, total: int) -> None:
    """Turn the run's one progress bar into a byte counter for the next phase."""
    progress.unit, progress.unit_scale, progress.unit_divisor = "B", True, 1024
    progress.set_description(description, refresh=False)
    progress.reset(total=total)


class _ReadMeter:
    """Shows the bytes read of a large file while it is chunked (the bar itself moves as chunks are written)."""

    def __init__(self, progress) -> None:
        self.progress, self.read = progress, 0

    def __call__(self, nbytes: int) -> None:
        self.read += nbytes
        self.progress.set_postfix_str(f"read {self.read / 2**20:.0f} MiB", refresh=True)


def _as_index(store: IndexStore, text_model: BaseEmbedding, image_model: MultiModalEmbedding) -> MultiModalVectorStoreIndex:
    return MultiModalVectorStoreIndex.from_vector_store(
        vector_store=store.vector_store(store.text_collection),
        embed_model=text_model,
        image_vector_store=store.vector_store(store.image_collection),
        image_embed_model=image_model,
    )


def build_index(folder: str | Path, **kwargs) -> MultiModalVectorStoreIndex:
    """Index ``folder`` (incrementally) and return it as a ``MultiModalVectorStoreIndex``.

    Keyword arguments are those of :class:`FolderIndexer`. The run's :class:`IndexReport` is attached to
    the returned index as ``index.indexing_report``.

    Example:
        >>> index = build_index("docs/", text_model="minilm", image_model="auto")
        >>> retriever = index.as_retriever(similarity_top_k=5, image_similarity_top_k=5)
    """
    indexer = FolderIndexer(folder, **kwargs)
    report = indexer.run()
    index = indexer.load()
    index.indexing_report = report
    return index


def load_index(
    store: str | Path | None = None,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    collection: str = "mmrag",
    text_model: str | BaseEmbedding | None = None,
    image_model: str | MultiModalEmbedding | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> MultiModalVectorStoreIndex:
    """Open an existing index. Models default to the ones recorded when it was built.

    Args:
        store: The embedded store folder (e.g. ``docs/.mmrag``), or None with ``qdrant_url``. Read-only stores
            are searched through a temporary copy; nothing is created in the store.
        qdrant_url: URL of a Qdrant server.
        qdrant_api_key: API key for the server.
        collection: Collection-name prefix used when indexing.
        text_model: Override the recorded text embedding model (must produce the same space).
        image_model: Override the recorded image embedding model.
        device: Torch device for the models.
        dtype: CLIP dtype.

    Raises:
        StoreError: no index there, or the store is outdated, damaged, moved, in use or unreachable (one line, with the fix).

    Example:
        >>> index = load_index("docs/.mmrag")
        >>> index.as_retriever(similarity_top_k=5).retrieve("quarterly revenue")
    """
    index_store = open_store(store, qdrant_url, qdrant_api_key, collection)
    meta = index_store.read_meta()
    if meta is None:
        where = qdrant_url or store
        raise StoreError(f"no index with collection prefix {collection!r} in {where}; run `mmrag index FOLDER` first")
    text = resolve_text_embedding(text_model or meta["text_model"], device=device)
    if image_model is None:
        image_model = "text" if meta.get("image_mode") == "surrogate" else meta["image_model"]
    image = resolve_image_embedding(image_model, text, device=device, dtype=dtype)
    return _as_index(index_store, text, image)
