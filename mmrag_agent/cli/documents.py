"""``mmrag index``, ``search``, ``ask`` and ``demo``: index a folder, search it, and answer with explanations."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import CollectionOption, DeviceOption, ModelOption, StoreOption, UrlOption, console, fail, quiet_libraries


def index(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of documents to index (recursively)."),
    store: Optional[Path] = StoreOption,
    qdrant_url: Optional[str] = UrlOption,
    collection: str = CollectionOption,
    text_model: str = typer.Option("minilm", "--text-model", help="'minilm' (offline all-MiniLM-L6-v2) or a sentence-transformers id/directory."),
    image_model: str = typer.Option("auto", "--image-model", help="'auto' (CLIP if available, else image-as-text), 'text', or a CLIP id/directory."),
    device: str = DeviceOption,
    ocr: str = typer.Option("auto", "--ocr", help="OCR images and scanned PDF pages: auto|on|off."),
    max_image_pixels: int = typer.Option(8192 * 8192, "--max-image-pixels", help="Refuse larger images (decompression-bomb guard)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Tokens per text chunk (default: the text model's window)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Drop the existing index and re-embed everything."),
) -> None:
    """Index FOLDER incrementally: unchanged files are skipped, changed ones replaced, deleted ones removed."""
    quiet_libraries()
    from ..indexing import FolderIndexer, StoreError

    try:
        indexer = FolderIndexer(folder, store=store, qdrant_url=qdrant_url, collection=collection, text_model=text_model,
                                image_model=image_model, device=device, ocr=ocr, max_image_pixels=max_image_pixels,
                                chunk_size=chunk_size, rebuild=rebuild)
        report = indexer.run()
    except StoreError as exc:
        fail(str(exc))
    print_report(report, where=qdrant_url or str(indexer.store_path))


def print_report(report, where: str) -> None:
    table = Table(title=f"Index {where}", show_header=False)
    for label, value in (("indexed", len(report.indexed)), ("unchanged", len(report.unchanged)), ("removed", len(report.removed)),
                         ("failed", len(report.failed)), ("duplicates skipped", len(report.duplicates)),
                         ("text points", report.text_points), ("image points", report.image_points), ("seconds", f"{report.seconds:.1f}")):
        table.add_row(label, str(value))
    console.print(table)
    if report.failed:
        failures = Table(title="Not indexed", show_lines=False)
        failures.add_column("file")
        failures.add_column("reason")
        for failure in report.failed:
            failures.add_row(failure.path, failure.reason)
        console.print(failures)
    for path, original in report.duplicates:
        console.print(f"[dim]duplicate: {path} has the same content as {original}; indexed once[/dim]")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


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
    from llama_index.core.schema import ImageNode

    retriever = index_.as_retriever(similarity_top_k=k, image_similarity_top_k=k)
    hits = retriever.retrieve(query)
    for kind, wanted in (("Text", False), ("Image", True)):
        table = Table(title=f"{kind} hits for {query!r}")
        for column in ("#", "score", "file", "content"):
            table.add_column(column, overflow="fold")
        rows = [h for h in hits if isinstance(h.node, ImageNode) == wanted]
        for rank, hit in enumerate(rows, start=1):
            meta = hit.node.metadata
            where = meta.get("rel_path", "") + (f" p.{meta['page']}" if "page" in meta else "")
            snippet = " ".join(hit.node.get_content().split())[:160]
            table.add_row(str(rank), f"{hit.score:.3f}", where, snippet)
        console.print(table)



def make_engine(index_, model: str, stage1_model: Optional[str], stage2_model: Optional[str], device: str, keep: int,
                k_text: int, k_image: int, max_new_tokens: int):
    from ..engine import MMRAGQueryEngine
    from ..models import ModelLoadError

    try:
        return MMRAGQueryEngine.from_defaults(index_, model=model, stage1_model=stage1_model, stage2_model=stage2_model, device=device,
                                              keep=keep, k_text=k_text, k_image=k_image, max_new_tokens=max_new_tokens)
    except ModelLoadError as exc:
        fail(str(exc))


def ask(
    question: str = typer.Argument(..., help="The question."),
    store: Optional[Path] = StoreOption,
    qdrant_url: Optional[str] = UrlOption,
    collection: str = CollectionOption,
    model: str = ModelOption,
    stage1_model: Optional[str] = typer.Option(None, "--stage1-model", help="Stage-1 model (default: --model)."),
    stage2_model: Optional[str] = typer.Option(None, "--stage2-model", help="Stage-2 model (default: --model)."),
    keep: int = typer.Option(5, "--keep", min=1, help="Candidates stage 1 passes to stage 2."),
    k_text: int = typer.Option(20, "--k-text", min=1, help="Text candidates retrieved."),
    k_image: int = typer.Option(20, "--k-image", min=1, help="Image candidates retrieved."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Stage-2 generation budget."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write the explanation as one self-contained HTML page."),
    device: str = DeviceOption,
) -> None:
    """Answer QUESTION from the index: the answer, its cited sources and the model's reasoning."""
    quiet_libraries()
    engine = make_engine(open_index(store, qdrant_url, collection, device), model, stage1_model, stage2_model, device, keep, k_text, k_image, max_new_tokens)
    explained = engine.explain(question)
    print_explained(explained)
    if html:
        console.print(f"explanation page: {write_html(explained, html)}")


def write_html(explained, path: Path) -> Path:
    from ..explain_html import write_explanation_html

    return write_explanation_html(explained, path)


def print_explained(explained) -> None:
    from rich.panel import Panel

    console.print(Panel(explained.answer, title=f"Answer: {explained.question}", border_style="green"))
    cited = explained.cited
    if cited:
        console.print("Cited sources: " + "; ".join(f"[{c.stage2_position}] {c.source}" for c in cited))
    console.print(Panel(explained.reasoning or "(no reasoning given)", title="Reasoning", border_style="blue"))
    for warning in explained.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    table = Table(title="Candidates")
    for column in ("rank", "[n]", "P(relevant)", "retrieval", "kind", "source", "content"):
        table.add_column(column, overflow="fold")
    for c in explained.candidates:
        table.add_row(str(c.stage2_rank or "-"), f"[{c.stage2_position}]" if c.stage2_position else "-",
                      f"{c.stage1_probability:.3f}" if c.stage1_probability is not None else "-",
                      f"{c.retrieval_score:.3f}" if c.retrieval_score is not None else "-", c.modality, c.source,
                      " ".join(c.text.split())[:90] + (" (cited)" if c.cited else ""))
    console.print(table)
    console.print("[dim]" + ", ".join(f"{k} {v:.1f} s" for k, v in explained.timings.items()) + "[/dim]")


DEMO_QUESTIONS = (
    "How did revenue change over the year?",
    "What does the coffee extraction chart show?",
    "Who is the astronaut in the photo?",
)


def demo(
    folder: Path = typer.Option(None, "--folder", help="Folder to index (default: the bundled examples/docs)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Where to put the index (default: a temporary folder)."),
    model: str = ModelOption,
    html: Path = typer.Option(Path("mmrag-demo.html"), "--html", help="Where to write the explanation page of the first question."),
    questions: int = typer.Option(len(DEMO_QUESTIONS), "--questions", min=0, max=len(DEMO_QUESTIONS), help="How many demo questions to ask."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1, help="Stage-2 generation budget."),
) -> None:
    """Offline demo: index the bundled folder, then answer questions with explanations and write an HTML page."""
    quiet_libraries()
    import tempfile

    from ..indexing import FolderIndexer

    folder = folder or Path(__file__).resolve().parents[2] / "examples" / "docs"
    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} not found; pass --folder with a folder of documents")
    store = store or Path(tempfile.mkdtemp(prefix="mmrag-demo-"))
    console.rule(f"Indexing {folder}")
    indexer = FolderIndexer(folder, store=store)
    print_report(indexer.run(), where=str(store))
    console.rule("Indexing again (nothing changed)")
    print_report(indexer.run(), where=str(store))
    index_ = indexer.load()
    console.rule("Searching")
    print_hits("a photo of an astronaut", index_, k=3)
    if not questions:
        return
    engine = make_engine(index_, model, None, None, "cpu", keep=5, k_text=20, k_image=20, max_new_tokens=max_new_tokens)
    for number, question in enumerate(DEMO_QUESTIONS[:questions]):
        console.rule(question)
        explained = engine.explain(question)
        print_explained(explained)
        if number == 0:
            console.print(f"explanation page: {write_html(explained, html)}")

