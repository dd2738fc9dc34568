"""Fail fast when a model would have to come from the Hugging Face Hub and the Hub cannot be reached.

The hub client retries for tens of seconds (and prints every retry) before it gives up on an offline machine.
:func:`require_hub_model` answers in at most a few seconds: a name that looks like a path but does not exist,
or a hub id that is neither in the local cache nor reachable, is a one-line error naming the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HubModelUnavailable", "hub_model_available", "looks_like_path", "require_hub_model"]


class HubModelUnavailable(OSError):
    """A model named by hub id or path cannot be had; the message names it and what to pass instead."""


def looks_like_path(name: str) -> bool:
    """True for names a user meant as a path (``./run``, ``/data/m``, ``~/m``, ``runs/a/b``), not a hub id (``org/name``).

    Example:
        >>> looks_like_path("./no-such-run"), looks_like_path("Qwen/Qwen2-VL-2B-Instruct")
        (True, False)
    """
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")
            or Path(name).suffix in (".gguf", ".json", ".safetensors", ".bin"))


def hub_model_available(model_id: str, timeout: float = 3.0) -> bool:
    """True when ``model_id`` is in the local Hugging Face cache, or the Hub answers within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
            return True
    except ValueError:  # not a valid repo id
        return False
    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    port = 443 if constants.ENDPOINT.startswith("https") else 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return os.environ.get("HTTPS_PROXY") is not None  # behind a proxy: let the hub client try


def require_hub_model(name: str, what: str, instead: str) -> None:
    """Raise :class:`HubModelUnavailable` at once unless ``name`` is an existing path or an obtainable hub id.

    Args:
        name: What the user passed.
        what: What it is for, e.g. ``"model"`` or ``"text embedding model"``.
        instead: What to pass instead, for the message.
    """
    path = Path(name).expanduser()
    if path.exists():
        return
    if looks_like_path(name):
        raise HubModelUnavailable(f"no {what} at {name}: that path does not exist; {instead}")
    if not hub_model_available(name):
        raise HubModelUnavailable(f"{what} {name!r} is not in the local cache and the Hugging Face Hub cannot be reached "
                                  f"(offline?); {instead}")
