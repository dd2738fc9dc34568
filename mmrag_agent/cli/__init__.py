"""The ``mmrag`` command line: ``index``, ``search``, ``ask``, ``demo``, ``export``, ``import``, ``eval`` and ``train``.

One module per group of commands (:mod:`.documents`, :mod:`.store`, :mod:`.eval`, :mod:`.train`), sharing :mod:`.common`. Only
typer and rich are imported at module level, so ``mmrag --help`` stays fast and torch-free.
"""

from __future__ import annotations

import typer

from . import documents, store
from .eval import eval_app
from .train import train_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Explainable multimodal RAG over your document folders.")
for command in (documents.index, documents.search, documents.ask, documents.demo):
    app.command()(command)
app.command()(store.export)
app.command(name="import")(store.import_)
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")


def main() -> None:
    app()


__all__ = ["app", "main"]
