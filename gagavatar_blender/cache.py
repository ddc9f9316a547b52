"""Module-level cache of loaded networks and avatars, keyed by (kind, path or id, device).

The render engine loads the GAGAvatar network once and reuses it for every frame and render;
"Free GAGAvatar Memory" (``gagavatar.free_memory``) empties the cache, and so does opening a file
(a ``load_post`` handler, see :mod:`.handlers`).

Loading runs outside the cache's lock: a load (seconds) in the worker or render thread holds only
the lock of its own key, so the viewport's draw (another key, or :func:`size`, :func:`free`)
never waits for it; two threads asking for the same key load it once.
"""
import sys
import threading

_CACHE: dict[tuple[str, str, str], object] = {}
_LOCK = threading.Lock()  # guards _CACHE and _KEY_LOCKS only, never held during a load
_KEY_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}


def get(key: tuple[str, str, str], load):
    """The cached object for ``key``, loading it with ``load()`` the first time (thread-safe)."""
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:
        with _LOCK:
            if key in _CACHE:  # loaded by another thread while this one waited
                return _CACHE[key]
        value = load()
        with _LOCK:
            _CACHE[key] = value
            _KEY_LOCKS.pop(key, None)
        return value


def size() -> int:
    return len(_CACHE)


def drop(predicate) -> int:
    """Drop the entries whose key satisfies ``predicate(key)``; return how many were dropped."""
    with _LOCK:
        keys = [key for key in _CACHE if predicate(key)]
        for key in keys:
            del _CACHE[key]
    return len(keys)


def free() -> int:
    """Drop everything cached and return how many entries were dropped; also the frame buffers kept
    for the next render (:func:`~..engine.framing.release_buffers`) and, when torch is loaded, the
    CUDA cache."""
    from ..engine import framing
    n = drop(lambda key: True)
    framing.release_buffers()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return n
