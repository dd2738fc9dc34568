"""``mmrag index`` and ``mmrag search``: index a folder, and search it."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from .common import CollectionOption, DeviceOption, StoreOption, UrlOption, fail, quiet_libraries
from .output import heading, number, one_line, say


class OcrMode(str, Enum):
    """``--ocr``: OCR images and scanned PDF pages when the ``ocr`` extra is installed (auto), always, or never."""

    auto = "auto"
    on = "on"
    off = "off"


def index(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of documents to index (recursively)."),
    store: Optional[Path] = StoreOption,
    qdrant_url: Optional[str] = UrlOption,
    collection: str = CollectionOption,
    text_model: str = typer.Option("minilm", "--text-model", help="'minilm' (offline all-MiniLM-L6-v2) or a sentence-transformers id/directory."),
    image_model: str = typer.Option("auto", "--image-model", help="'auto' (CLIP if available, else image-as-text), 'text', or a CLIP id/directory."),
    device: str = DeviceOption,
    ocr: OcrMode = typer.Option(OcrMode.auto, "--ocr", help="OCR images and scanned PDF pages."),
    max_image_pixels: int = typer.Option(8192 * 8192, "--max-image-pixels", help="Refuse larger images (decompression-bomb guard)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Tokens per text chunk (default: the text model's window)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Drop the existing index and re-embed everything."),
) -> None:
    """Index FOLDER incrementally: unchanged files are skipped, changed ones replaced, deleted ones removed."""
    check_embedding_models(text_model, image_model)
    quiet_libraries()
    from ..indexing import EmbeddingModelUnavailable, FolderIndexer, StoreError

    started = time.perf_counter()
    try:
        indexer = FolderIndexer(folder, store=store, qdrant_url=qdrant_url, collection=collection, text_model=text_model,
                                image_model=image_model, device=device, ocr=ocr.value, max_image_pixels=max_image_pixels,
                                chunk_size=chunk_size, rebuild=rebuild)
        report = indexer.run()
    except (EmbeddingModelUnavailable, StoreError) as exc:
        fail(str(exc))
    report.seconds = time.perf_counter() - started  # what the user waited, loading the models included
    print_report(report, where=qdrant_url or str(indexer.store_path))


def check_embedding_models(text_model: str, image_model: str) -> None:
    """Fail in one line, before the store is opened or a model loads, when an embedding model cannot be had."""
    from ..hub import HubModelUnavailable, require_hub_model
    from ..indexing.embeddings import MINILM_ALIASES

    try:
        if text_model not in MINILM_ALIASES:
            require_hub_model(text_model, "text embedding model", "pass a local sentence-transformers directory, or 'minilm'")
        if image_model not in ("auto", "text", "surrogate", "image-as-text"):
            require_hub_model(image_model, "image embedding model", "pass a local CLIP directory, 'text' or 'auto'")
    except HubModelUnavailable as exc:
        fail(str(exc))


def print_report(report, where: str) -> None:
    """The run's summary, every file not indexed with its reason, duplicates and warnings (as plain text)."""
    heading("Index")
    say("store: ", where)
    say(f"{len(report.indexed)} indexed, {len(report.unchanged)} unchanged, {len(report.removed)} removed, "
        f"{len(report.failed)} failed, {len(report.duplicates)} duplicate(s) skipped")
    say(f"{report.text_points} text and {report.image_points} image points; {report.seconds:.1f} s")
    if report.failed:
        say(("Not indexed:", "bold yellow"))
        for failure in report.failed:
            say("- ", (failure.path, "bold"), ": ", failure.reason, indent=2)
    for path, original in report.duplicates:
        say(f"duplicate: {path} has the same content as {original}; indexed once", style="dim")
    for warning in report.warnings:
        say(("warning: ", "yellow"), warning)


def search(
    query: str = typer.Argument(..., help="What to look for."),
    store: Optional[Path] = StoreOption,
    qdrant_url: Optional[str] = UrlOption,
    collection: str = CollectionOption,
    k: int = typer.Option(5, "-k", "--top-k", min=1, help="Hits per modality."),
    device: str = DeviceOption,
) -> None:
    """Print the top text and image hits for QUERY with their scores."""
    quiet_libraries()
    from ..indexing import StoreError

    index_ = open_index(store, qdrant_url, collection, device)
    try:
        print_hits(query, index_, k)
    except StoreError as exc:
        fail(str(exc))


def open_index(store: Optional[Path], qdrant_url: Optional[str], collection: str, device: str):
    """The index in ``store``, the Qdrant server at ``qdrant_url``, or by default ``./.mmrag`` (one-line error, exit 2)."""
    from ..indexing import StoreError, load_index

    try:
        return load_index(store=store or (None if qdrant_url else Path(".mmrag")), qdrant_url=qdrant_url, collection=collection, device=device)
    except StoreError as exc:
        fail(str(exc))


def print_hits(query: str, index_, k: int) -> None:
    """The top ``k`` text and image hits, one line each (data printed as text, never as markup)."""
    from llama_index.core.schema import ImageNode

    if not query.strip():
        fail("the query is empty; search for something")
    retriever = index_.as_retriever(similarity_top_k=k, image_similarity_top_k=k)
    hits = retriever.retrieve(query)
    for kind, wanted in (("Text", False), ("Image", True)):
        heading(f"{kind} hits for {one_line(query, 200)!r}")
        rows = [h for h in hits if isinstance(h.node, ImageNode) == wanted]
        for rank, hit in enumerate(rows, start=1):
            meta = hit.node.metadata
            where = meta.get("rel_path", "") + (f" p.{meta['page']}" if "page" in meta else "")
            say(f"{rank}. {number(hit.score)}  ", (where, "bold"))
            say(one_line(hit.node.get_content(), 160), indent=4)
        if not rows:
            say("(none)", style="dim")
