"""The ``mmrag`` command line: ``index``, ``search``, ``ask``, ``demo``, ``export``, ``import``, ``eval`` and ``train``.

One module per group of commands (:mod:`.documents`, :mod:`.answers`, :mod:`.store`, :mod:`.eval`, :mod:`.train`),
sharing :mod:`.common` and :mod:`.output`. Only typer and rich are imported at module level, so ``mmrag --help``
stays fast and torch-free.
"""

from __future__ import annotations

from typing import Optional

import sys

import typer
from typer._click import exceptions as click_exceptions  # typer vendors click; its exceptions live here
from typer.core import TyperGroup

from . import answers, documents, store
from .common import set_verbose
from .eval import eval_app
from .train import train_app


class _OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, a missing argument) are one line with the fix, exit 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # a typer.Exit comes back as its exit code
            sys.exit(code if isinstance(code, int) else 0)
        except click_exceptions.NoArgsIsHelpError as exc:  # a bare group: its help
            exc.show()
            sys.exit(exc.exit_code)
        except click_exceptions.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "mmrag"
            typer.echo(f"error: {exc.format_message().rstrip('.')}; see `{command} --help`", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(130)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="Explainable multimodal RAG over your document folders.")


@app.callback()
def options(
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the models (default: the cores other processes leave free)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show the libraries' warnings, logs and loading bars."),
) -> None:
    """Explainable multimodal RAG over your document folders."""
    from ..runtime import configure_threads

    configure_threads(threads)
    set_verbose(verbose)


for command in (documents.index, documents.search, answers.ask, answers.demo):
    app.command()(command)
app.command()(store.export)
app.command(name="import")(store.import_)
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")


def main() -> None:
    app()


__all__ = ["app", "main"]
