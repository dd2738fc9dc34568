"""Opening and closing index stores: the embedded Qdrant Edge store or a Qdrant server, behind one function.

:mod:`.store` is the interface both back ends implement; this module picks one (it imports both, so it sits above
them and the interface below).
"""

from __future__ import annotations

import atexit
import sys
from pathlib import Path

from .store import IndexStore, StoreError

__all__ = ["close_local_clients", "close_stores", "open_store"]

_open_stores: list[IndexStore] = []


def register_open_store(store: IndexStore) -> None:
    """Remember ``store`` so that :func:`close_local_clients` releases it."""
    _open_stores.append(store)


def close_local_clients() -> None:
    """Close every store opened in this process (releases the embedded stores' locks and temporary copies)."""
    while _open_stores:
        _open_stores.pop().close()
    edge = sys.modules.get(f"{__package__}.edge")
    if edge is not None:
        edge.close_shards()


close_stores = close_local_clients
atexit.register(close_local_clients)


def open_store(store: str | Path | None = None, url: str | None = None, api_key: str | None = None,
               prefix: str = "mmrag", *, create: bool = False, rebuild: bool = False, trust_moved: bool = False) -> IndexStore:
    """Open the index store: a Qdrant server when ``url`` is given, else the embedded store folder ``store``.

    Args:
        store: The embedded store folder (e.g. ``docs/.mmrag``).
        url: URL of a Qdrant server (``store`` is then ignored).
        api_key: API key for the server.
        prefix: Collection-name prefix of the index.
        create: Allow creating the store folder (indexing, import); reading never creates anything.
        rebuild: Delete the index first, without reading it (works on a damaged or outdated store).
        trust_moved: Open an embedded store found elsewhere than where it was written (export does; nothing else).

    Returns:
        An :class:`IndexStore`.

    Raises:
        StoreError: the store is missing, outdated, damaged, in use, unreachable or not writable.

    Example:
        >>> store = open_store("docs/.mmrag")
        >>> store.count(store.text_collection)
    """
    if url:
        from .server_store import ServerIndexStore

        index_store: IndexStore = ServerIndexStore.connect(url, api_key, prefix, rebuild=rebuild)
    elif store is None:
        raise StoreError("give a store folder (--store) or a Qdrant server URL (--qdrant-url)")
    else:
        from .edge_store import EdgeIndexStore

        index_store = EdgeIndexStore.open(Path(store), prefix, create=create, rebuild=rebuild, allow_moved=trust_moved)
    register_open_store(index_store)
    return index_store
