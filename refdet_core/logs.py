"""Logging helpers shared by the package."""

from __future__ import annotations

import logging
import threading

_seen: set[tuple[str, str, tuple]] = set()
_lock = threading.Lock()


def warn_once(log: logging.Logger, msg: str, *args: object) -> bool:
    """``log.warning(msg, *args)`` the first time this message with these arguments comes up in the process;
    later repeats go to ``debug``. Returns whether the warning was shown.

    For conditions that every model or setup built in a process hits alike (e.g. an encoder without
    weights): a notebook that builds twenty models shows the warning once, not twenty times.
    """
    key = (log.name, msg, tuple(map(str, args)))
    with _lock:
        first = key not in _seen
        _seen.add(key)
    if first:
        log.warning(msg, *args)
    else:
        log.debug(msg, *args)
    return first
