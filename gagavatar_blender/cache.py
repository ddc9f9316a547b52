"""Module-level cache of loaded networks and avatars, keyed by (kind, path or id, device).

The render engine loads the GAGAvatar network once and reuses it for every frame and render;
"Free GAGAvatar Memory" (``gagavatar.free_memory``) empties the cache.
"""
import sys
import threading

_CACHE: dict[tuple[str, str, str], object] = {}
_LOCK = threading.RLock()


def get(key: tuple[str, str, str], load):
    """The cached object for ``key``, loading it with ``load()`` the first time (thread-safe)."""
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load()
        return _CACHE[key]


def size() -> int:
    return len(_CACHE)


def free() -> int:
    """Drop everything cached and return how many entries were dropped; empties the CUDA cache when torch is loaded."""
    with _LOCK:
        n = len(_CACHE)
        _CACHE.clear()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return n
