"""Crash-safe file output: atomic writes (temp file, fsync, rename) and a per-folder run lock."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from edgekd.errors import EdgeKDError


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was, so a reader never
    sees a half-written file, even if the process is killed mid-write. Tools that insist on a file
    suffix (ONNX Runtime, OpenVINO) get one via ``suffix`` (default: the suffix of ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=(path.suffix if suffix is None else suffix) + ".tmp",
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files, and some writers (safetensors) replace the file with their own 0600
        # one: set the mode once the content is there, so every output is readable as the umask allows
        # (and a script its writer made executable stays executable).
        executable = os.stat(tmp_path).st_mode & 0o111
        os.chmod(tmp_path, (0o777 if executable else 0o666) & ~_umask())
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


LOCK_NAME = ".edgekd.lock"


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` for the life of a run.

    A second run writing into the same folder fails at once with a one-line error instead of
    interleaving files. The lock is an ``flock`` on ``.edgekd.lock``, released by the kernel when the
    process dies, so a killed run never leaves a stale lock behind; a run that ends removes the file.
    """
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock_file = directory / LOCK_NAME
    while True:
        fh = open(lock_file, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            fh.close()
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise EdgeKDError(
                    f"output folder {directory} is being written by another edgekd run",
                    "wait for it to finish or choose another --out",
                ) from None
            raise
        # The run before us removes the file as it ends: a lock won on a removed file guards nothing.
        try:
            if os.fstat(fh.fileno()).st_ino == os.stat(lock_file).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    try:
        yield lock_file
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock_file.unlink()
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


@contextlib.contextmanager
def wait_lock(lock_file: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``lock_file``, waiting for another process that holds it.

    For shared caches: a second process that needs the same entry waits for the first to write it,
    then reads it, instead of computing it again into the same files. Released when the process dies.
    """
    import fcntl

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield lock_file
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def remove_stale_temporaries(folder: str | os.PathLike, name: str) -> int:
    """Delete temporary files ``atomic_path`` left for ``folder/name`` when a process was killed mid-write.

    Only safe while holding the lock that guards ``name``; returns how many were removed.
    """
    removed = 0
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$EDGEKD_CACHE_DIR``, else the platform's user cache dir for edgekd."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("EDGEKD_CACHE_DIR"):
        return Path(os.environ["EDGEKD_CACHE_DIR"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("edgekd"))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
