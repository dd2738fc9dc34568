"""``mmrag export`` and ``mmrag import``: move an index between stores, machines and folders as one file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import CollectionOption, StoreOption, UrlOption, console, fail, quiet_libraries

ApiKeyOption = typer.Option(None, "--qdrant-api-key", envvar="QDRANT_API_KEY", help="API key of the Qdrant server.")


def export(
    file: Path = typer.Argument(..., dir_okay=False, help="Export file to write (.jsonl, or .jsonl.gz to compress)."),
    store: Optional[Path] = StoreOption,
    qdrant_url: Optional[str] = UrlOption,
    qdrant_api_key: Optional[str] = ApiKeyOption,
    collection: str = CollectionOption,
) -> None:
    """Write the index (metadata, ids, vectors, payloads) to FILE, for `mmrag import` into another store or server."""
    quiet_libraries()
    from ..indexing.store import StoreError
    from ..indexing.stores import open_store
    from ..indexing.transfer import export_index

    try:
        index_store = open_store(store or (None if qdrant_url else Path(".mmrag")), qdrant_url, qdrant_api_key, collection,
                                 trust_moved=True)
        report = export_index(index_store, file)
    except StoreError as exc:
        fail(str(exc))
    console.print(f"exported {report.points['text']} text and {report.points['images']} image points to {file}", markup=False)


def import_(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Export file written by `mmrag export`."),
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="The folder this index is of (its documents)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Embedded store to import into (default: FOLDER/.mmrag)."),
    qdrant_url: Optional[str] = UrlOption,
    qdrant_api_key: Optional[str] = ApiKeyOption,
    collection: str = CollectionOption,
    rebuild: bool = typer.Option(False, "--rebuild", help="Replace an index already in the target store."),
) -> None:
    """Load FILE into an embedded store or a Qdrant server as the index of FOLDER (then `mmrag index FOLDER` keeps it current)."""
    quiet_libraries()
    from ..indexing.store import DEFAULT_STORE_DIRNAME, StoreError
    from ..indexing.stores import open_store
    from ..indexing.transfer import import_index

    target = None if qdrant_url else (store or folder / DEFAULT_STORE_DIRNAME)
    try:
        index_store = open_store(target, qdrant_url, qdrant_api_key, collection, create=True, rebuild=rebuild)
        report = import_index(file, index_store, folder)
    except StoreError as exc:
        fail(str(exc))
    where = qdrant_url or str(target)
    console.print(f"imported {report.points['text']} text and {report.points['images']} image points into {where}", markup=False)
