"""Destinations a command writes: refuse what the project did not make, clean what a killed run left behind.

A command that replaces a folder (the frame store, a checkpoint) or writes into one (a run folder) first checks
that the folder holds only what that command writes (``check_destination``). A data root, a user's folder or a
file at that path is refused with one line naming it, unless the user passes ``force``; a folder that holds
the data being read is refused even then.

Temporary folders and files are named ``.NAME.tmp-<pid>-<random>`` beside their destination, so the next start
removes exactly those a killed run left (``clean_leftovers``): the pid tells whether their writer still runs.
A replaced folder waits as ``.NAME.old`` between two renames; when a crash left it and no ``NAME``, it is
moved back (``recover_old``).

Everything made here follows the user's umask (``tempfile`` alone would make 0600 files and 0700 folders).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# .NAME.tmp-<pid>-<random>[.tmp] (this module) and the older .NAME.tmp-<random> / .NAME.old-<random> names
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?[a-z0-9_]+(?:\.tmp)?$")
# .NAME.<8 random chars>, what tempfile.mkdtemp(prefix=".NAME.") made (checkpoints before pid names)
_LEGACY_CHECKPOINT_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}$")


class DestinationError(ValueError):
    """A destination that holds something the command did not make; the message names it."""


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def temp_prefix(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}-"


def make_temp_dir(parent: str | Path, name: str) -> Path:
    """A fresh ``parent/.NAME.tmp-<pid>-<random>`` folder with the umask's permissions."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=temp_prefix(name)))
    os.chmod(tmp, dir_mode())
    return tmp


def _is_inside(inner: Path, outer: Path) -> bool:
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def _describe(names: list[str]) -> str:
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"holds {names[0]!r}{more}"


def check_destination(
    path: str | Path,
    *,
    what: str,
    foreign: Callable[[Path], list[str]],
    force: bool = False,
    protect: Iterable[str | Path] = (),
) -> None:
    """Raise ``DestinationError`` unless ``path`` is missing, an empty folder, or a folder of a ``what``.

    ``foreign(folder)`` names the entries that are not a ``what``'s (none: the folder is one).
    ``force`` lets the command replace anything but a path that is, holds or lies inside one of ``protect``.
    """
    path = Path(path)
    for keep in protect:
        if _is_inside(Path(keep), path) or _is_inside(path, Path(keep)):
            raise DestinationError(f"{path}: overlaps the input {keep}; refusing to write a {what} there")
    if not path.exists() and not path.is_symlink():
        return
    if force:
        log.warning("%s: replacing what is there (forced)", path)
        return
    if path.is_symlink() or not path.is_dir():
        raise DestinationError(f"{path}: is a file, not a {what}; refusing to replace it (remove it or pass --force)")
    others = foreign(path)
    if others:
        raise DestinationError(
            f"{path}: not a {what} ({_describe(others)}); refusing to replace it "
            "(choose a new or empty folder, or pass --force)"
        )


def check_file_destination(path: str | Path, *, what: str, ours: Callable[[Path], bool]) -> None:
    """Raise ``DestinationError`` unless ``path`` is new or an existing file that ``ours`` recognises as a
    ``what`` written before (a folder, or a file of anything else, is never replaced)."""
    path = Path(path)
    if path.is_dir():
        raise DestinationError(f"{path}: is a folder; expected the {what} file to write")
    if path.exists() and not ours(path):
        raise DestinationError(f"{path}: exists and is not a {what}; refusing to replace it")


def foreign_entries(folder: Path, allowed: Callable[[str], bool]) -> list[str]:
    """Entries of ``folder`` whose names ``allowed`` rejects (temporaries of this module are always allowed)."""
    return sorted(p.name for p in folder.iterdir() if not (allowed(p.name) or _TEMP.match(p.name)))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(folder: str | Path, names: Iterable[str] | None = None, *, legacy_checkpoint: bool = False) -> int:
    """Remove the temporaries that killed runs left in ``folder``; returns how many went.

    Only entries named ``.NAME.tmp-<pid>-*`` (or ``.NAME.old-*``) whose pid no longer runs, for ``NAME`` in
    ``names`` (default: any). ``legacy_checkpoint`` also removes ``.NAME.<8 chars>`` folders of those names.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    wanted = None if names is None else set(names)
    removed = 0
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        legacy = legacy_checkpoint and entry.is_dir() and _LEGACY_CHECKPOINT_TEMP.match(entry.name)
        match = m or legacy
        if not match or (wanted is not None and match.group("name") not in wanted):
            continue
        if m and m.group("pid") and _alive(int(m.group("pid"))):
            continue
        log.info("removing %s, left by an interrupted run", entry)
        _remove(entry)
        removed += 1
    return removed


def old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_old(path: str | Path, complete: Callable[[Path], bool]) -> None:
    """After a crash between the two renames of a replace: move ``.NAME.old`` back when ``NAME`` is missing and
    the old copy is ``complete``; drop it otherwise."""
    path = Path(path)
    old = old_path(path)
    if not old.exists():
        return
    if not path.exists() and complete(old):
        log.warning("%s: restoring the copy a crash left at %s", path, old)
        os.replace(old, path)
    else:
        _remove(old)


def replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished folder ``tmp`` at ``path`` by renames; the previous one goes only once the new one is in
    place (``.NAME.old`` holds it between the two renames)."""
    old = old_path(path)
    if path.exists():
        _remove(old)
        os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)
