"""What every ``mmrag`` command shares: the console, option definitions, one-line errors and quiet libraries."""

from __future__ import annotations

import logging
import os
from typing import NoReturn

import typer
from rich.console import Console

console = Console()

StoreOption = typer.Option(None, "--store", help="Embedded Qdrant directory (default: FOLDER/.mmrag, or ./.mmrag for search).")
UrlOption = typer.Option(None, "--qdrant-url", help="Qdrant server URL, e.g. http://localhost:6333 (instead of --store).")
CollectionOption = typer.Option("mmrag", "--collection", help="Collection-name prefix.")
DeviceOption = typer.Option("cpu", "--device", help="Torch device for the models.")
ModelOption = typer.Option("smollm2", "--model", help="Model of both stages: hub id, directory, .gguf, adapter dir or 'smollm2'.")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: a user error)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


_VERBOSE = False
_LIBRARIES = ("httpx", "huggingface_hub", "sentence_transformers", "transformers", "trl", "peft", "accelerate", "datasets",
              "llama_index", "qdrant_client", "urllib3", "PIL", "matplotlib", "rapidocr", "RapidOCR")


def set_verbose(verbose: bool) -> None:
    """``mmrag --verbose``: keep the libraries' warnings, logs and loading bars."""
    global _VERBOSE
    _VERBOSE = verbose


def quiet_libraries(*verbose_loggers: str) -> None:
    """Silence the libraries' warnings, info logs and loading bars (unless ``--verbose``); ``verbose_loggers`` (ours)
    stay at INFO. Our own warnings (mmrag_agent.*) are always shown."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO if _VERBOSE else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in verbose_loggers:
        logging.getLogger(name).setLevel(logging.INFO)
    if _VERBOSE:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|trl|peft|accelerate|datasets|PIL)\b")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
