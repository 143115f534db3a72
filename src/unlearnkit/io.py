"""The one atomic writer: files and whole directories appear complete or not at all.

A file is written under a temporary name beside its target and renamed into place; a directory is
assembled in a hidden staging directory beside its target and renamed into place. Either way a
crash, a full disk or Ctrl-C leaves the target as it was. Everything here creates ordinary files
(permissions from the umask), never the 0600/0700 of ``mkstemp``/``mkdtemp``. A symbolic link is swapped
the same way (:func:`atomic_symlink`). One process at a time writes a directory: :func:`claimed` holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError


def cache_root() -> Path:
    """Where unlearnkit keeps what it can recompute (memorised showcase models, testbeds, scores):
    ``$UNLEARNKIT_CACHE``, else ``~/.cache/unlearnkit``."""
    return Path(os.environ.get("UNLEARNKIT_CACHE", Path.home() / ".cache" / "unlearnkit"))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` and rename the temporary file to ``path`` once it returned.

    The temporary file sits beside ``path`` (same filesystem, so the rename is atomic) under a hidden
    name ending in the target's own suffix, so writers that choose a format by suffix
    (``savefig``) see the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".partial{path.suffix}")
    os.close(fd)
    temp = Path(name)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda temp: temp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextmanager
def staged_directory(directory: str | Path, *, replace: bool) -> Iterator[Path]:
    """Yield an empty staging directory that becomes ``directory`` when the block succeeds.

    ``replace=False`` refuses (``FileExistsError``) to put it where a directory already is; with
    ``replace=True`` the old directory is swapped out and removed only after the new one is in place.
    On an exception the staging directory is removed and ``directory`` is left as it was.
    """
    final = Path(directory).expanduser()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-{os.getpid()}-"))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _ordinary_permissions(staging)
    old = None
    if final.exists() or final.is_symlink():
        if not replace:
            shutil.rmtree(staging, ignore_errors=True)
            raise FileExistsError(final)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_staging(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed writers of ``directory`` left beside it (``.NAME.partial-PID-*`` staging directories
    and ``.NAME.old-PID`` swapped-out ones whose process is gone); returns what was removed."""
    final = Path(directory).expanduser()
    removed = []
    leftovers = [*final.parent.glob(f".{final.name}.partial-*"), *final.parent.glob(f".{final.name}.old-*")]
    for path in sorted(leftovers):
        pid = path.name.rsplit(".", 1)[-1].split("-")[1:2]
        if pid and pid[0].isdigit() and not _alive(int(pid[0])) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _ordinary_permissions(root: Path) -> None:
    # Libraries write some files through private temporary files (0600, e.g. transformers' safetensors);
    # what we hand to the user gets the permissions the umask gives any file.
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def atomic_symlink(link: str | os.PathLike[str], target: str) -> None:
    """Point the symbolic link ``link`` at ``target`` (relative to the link's folder), replacing an older link
    atomically: readers see the old target or the new one, never no link. Raises ``OSError`` where the
    filesystem has no symbolic links."""
    link = Path(link)
    temp = link.parent / f".{link.name}.link-{os.getpid()}"
    temp.unlink(missing_ok=True)
    try:
        temp.symlink_to(target)
        os.replace(temp, link)
    finally:
        temp.unlink(missing_ok=True)


class ClaimedElsewhere(UnlearnkitError):
    """Another live process holds the claim on a directory; ``holder`` says which (host, pid, since)."""

    def __init__(self, directory: Path, claim: Path, holder: dict[str, Any]) -> None:
        self.directory, self.claim, self.holder = directory, claim, holder
        self.holder_text = describe_holder(holder)
        super().__init__(f"{directory} is being written by {self.holder_text}; wait for it to finish, or write "
                         "to another directory.")


def make_parents(folder: Path) -> list[Path]:
    """mkdir -p ``folder``; return the folders it created, outermost first (for :func:`remove_if_empty`)."""
    missing = []
    probe = folder
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def remove_if_empty(created: list[Path]) -> None:
    """Remove the folders :func:`make_parents` created, innermost first, as far as nothing was put in them: a
    command that failed leaves the file system as it found it."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextmanager
def claimed(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the claim on ``directory`` for the block, so that no other process writes it meanwhile.

    The claim is ``.NAME.claim`` beside the directory, locked with ``flock``: the kernel releases the lock
    when its process ends, however it ends, so a killed run never leaves a claim behind that blocks the
    next one. The file records who holds it, for the message of :class:`ClaimedElsewhere`, raised at once
    when another live process holds the claim. It is removed when the block ends.
    """
    final = Path(directory).expanduser().resolve()
    created = make_parents(final.parent)  # removed again if the block leaves them empty (a run that failed)
    path = final.parent / f".{final.name}.claim"
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _claim_holder(descriptor)
            os.close(descriptor)
            raise ClaimedElsewhere(final, path, holder) from None
        try:  # the holder before us may have removed the file after we opened it: then lock the new one
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)
    try:
        since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since}).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # before unlocking: whoever locks the old file next sees it is gone
        os.close(descriptor)
        remove_if_empty(created)


def claim_holder(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds the claim on ``directory`` (host, pid, since; ``{}`` if unknown), or None when no process does."""
    final = Path(directory).expanduser().resolve()
    try:
        descriptor = os.open(final.parent / f".{final.name}.claim", os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _claim_holder(descriptor)
    finally:
        os.close(descriptor)
    return None


def describe_holder(holder: dict[str, Any]) -> str:
    """A claim's holder in words: "process PID on HOST since TIME"."""
    if not holder:
        return "another process"
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"


def _claim_holder(descriptor: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
