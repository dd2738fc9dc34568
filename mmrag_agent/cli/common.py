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


def quiet_libraries(*verbose_loggers: str) -> None:
    """Silence the libraries' info logs and progress bars; ``verbose_loggers`` stay at INFO."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in verbose_loggers:
        logging.getLogger(name).setLevel(logging.INFO)
    for name in ("httpx", "huggingface_hub", "sentence_transformers", "transformers", "trl", "peft", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
