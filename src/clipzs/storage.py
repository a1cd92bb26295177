"""Atomic file writes and up-front checks that an output location can be written.

Nothing clipzs writes is ever seen half-written: each file is written under a temporary name in its folder,
fsynced, and renamed over its final name (atomic on POSIX), so a crash, a full disk or Ctrl-C leaves the old
file whole. Outputs are checked before any work, so a bad `--out` costs seconds, not a finished evaluation.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .errors import ClipzsError

TMP_PREFIX = ".tmp-"


def _written_through(path: Path) -> bool:
    """Whether `path` is something other than a file or folder (`/dev/stdout`, a named pipe): written to in place,
    since nothing can be renamed over it."""
    return path.exists() and not path.is_file() and not path.is_dir()


def write_atomic(path: Path, data: bytes) -> None:
    """Make `path` hold `data`, so that no reader and no crash (even power loss) ever sees it partly written.

    Missing folders above it are created. A symbolic link keeps pointing where it did: its target is replaced. A
    path that is not a regular file (`/dev/stdout`, a named pipe) is written through, as nothing can be renamed
    over it. A failure (full disk, read-only filesystem) leaves the old file whole and is a one-line ClipzsError."""
    if _written_through(path):
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            raise ClipzsError(f"cannot write {path}: {e.strerror or e}") from e
        return
    path = Path(os.path.realpath(path))
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise ClipzsError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable before anything that relies on it
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writable_folder(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (created if missing, as far as it can be), or None if they can.

    Tries for real: creates the folder and a temporary file in it, then removes the file (and any folder it
    created), so permissions, read-only mounts and full disks are all caught.
    """
    created = []
    try:
        missing = []
        probe = folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        if not probe.is_dir():
            return f"{probe} is not a folder"
        for part in reversed(missing):
            part.mkdir()
            created.append(part)
        tmp = folder / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-probe"
        with open(tmp, "xb") as f:
            f.write(b"0")
            f.flush()
            os.fsync(f.fileno())
        tmp.unlink()
        return None
    except OSError as e:
        return os.strerror(e.errno) if e.errno else str(e)
    finally:
        for part in reversed(created):
            with contextlib.suppress(OSError):
                part.rmdir()


def check_output_file(path: Path, parameter: str) -> None:
    """A ClipzsError naming `parameter` unless `path` can be written as `write_atomic` writes it: in place where it
    is written through, else in the folder of the file a symbolic link names (its folder is made later)."""
    if path.is_dir():
        raise ClipzsError(f"{parameter} {path} is a folder; give a file name", parameter=parameter)
    if _written_through(path):
        if not os.access(path, os.W_OK):
            raise ClipzsError(f"cannot write {parameter} {path}: Permission denied", parameter=parameter)
        return
    problem = writable_folder(Path(os.path.realpath(path)).parent)
    if problem:
        raise ClipzsError(f"cannot write {parameter} {path}: {problem}", parameter=parameter)


def check_output_folder(folder: Path, parameter: str) -> None:
    """A ClipzsError naming `parameter` unless files can be created in `folder`."""
    if folder.exists() and not folder.is_dir():
        raise ClipzsError(f"{parameter} {folder} exists and is not a folder", parameter=parameter)
    problem = writable_folder(folder)
    if problem:
        raise ClipzsError(f"cannot write {parameter} {folder}: {problem}", parameter=parameter)
