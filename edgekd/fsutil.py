"""Crash-safe file output: atomic writes (temp file, fsync, rename) and a per-folder run lock."""

from __future__ import annotations

import contextlib
import errno
import json
import math
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
    """Write ``obj`` as JSON; NaN and infinities (which JSON has no spelling for) are written as null."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy arrays and scalars
        return _finite(obj.tolist())
    return obj


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
def wait_lock(lock_file: str | os.PathLike, while_waiting=None) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``lock_file``, waiting for another process that holds it.

    For shared caches: a second process that needs the same entry waits for the first to write it,
    then reads it, instead of computing it again into the same files. Released when the process dies.
    ``while_waiting``: a context manager factory entered only while blocked (the thread policy uses it
    to give a waiting job's cores to the job it waits for).
    """
    import fcntl

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with while_waiting() if while_waiting else contextlib.nullcontext():
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
    """``cache_dir``, else the user cache folder (:func:`cache_dir`: ``$EDGEKD_CACHE_DIR`` or the platform's)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from platformdirs import user_cache_dir

    return _user_dir("EDGEKD_CACHE_DIR", user_cache_dir)


def make_cache_folder(folder: str | os.PathLike, what: str) -> Path:
    """Create a cache folder (``what``: "teacher cache", ...), or one line saying why it cannot be."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdgeKDError(f"cannot create the {what} {folder} ({err.strerror})",
                          "set EDGEKD_CACHE_DIR to a writable folder") from None
    return folder


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def writable_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail before any work if ``path`` cannot become a folder edgekd writes into.

    A file in the way, /proc or /sys, a read-only or full file system and a folder without write
    permission (which root passes ``os.access`` for) are all found by creating, then removing, a probe
    file in the folder or in its nearest existing parent; nothing is left behind.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EdgeKDError(f"{what} {path} is a file, not a folder", f"choose another {what}")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise EdgeKDError(f"cannot create {what} {path}: {probe} is a file, not a folder", f"choose another {what}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".edgekd-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        hint = f"choose a writable {what}" if what.startswith("--") else "make it writable, or point it elsewhere"
        raise EdgeKDError(f"cannot write {what} {path}: {err.strerror or err} in {probe}", hint) from None
    return path


def refuse_existing_output(path: str | os.PathLike, *, overwrite: bool, what: str = "--out") -> Path:
    """An output folder that holds files, or an output file that exists, is refused unless ``overwrite``."""
    path = Path(path)
    taken = path.is_file() or (path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()))
    if taken and not overwrite:
        kind = "file" if path.is_file() else "folder"
        raise EdgeKDError(f"{what} {path}: the {kind} already exists and is not empty" if kind == "folder"
                          else f"{what} {path}: the file already exists",
                          f"pass --overwrite to replace it, or choose another {what}")
    return path


# A JSON, YAML or TOML file edgekd reads (reports, device results, profiles) is a few MB at most; a larger
# one is a wrong path (/dev/zero, a model, a disk image), refused before it is read into memory.
MAX_TEXT_BYTES = 256 * 2**20


def read_text_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """The UTF-8 text of a small regular file, or a one-line EdgeKDError saying why it cannot be read."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise EdgeKDError(f"{what} {path} does not exist", fix) from None
    except OSError as err:
        raise EdgeKDError(f"cannot read {what} {path}: {err.strerror or err}", fix) from None
    import stat as _stat

    if _stat.S_ISDIR(st.st_mode):
        raise EdgeKDError(f"{what} {path} is a folder, not a file", fix)
    if not _stat.S_ISREG(st.st_mode):
        raise EdgeKDError(f"{what} {path} is not a regular file (a device, pipe or socket)", fix)
    if st.st_size > MAX_TEXT_BYTES:
        raise EdgeKDError(f"{what} {path} is {st.st_size / 2**20:,.0f} MiB, too large to be one", fix)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgeKDError(f"{what} {path} is not UTF-8 text", fix) from None
    except OSError as err:
        raise EdgeKDError(f"cannot read {what} {path}: {err.strerror or err}", "check its permissions") from None


def _json_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, where: str, fix: str):
    """json.loads that refuses NaN/Infinity (not JSON) and nesting too deep to be edgekd's, in one line."""
    try:
        return json.loads(text, parse_constant=_json_constant)
    except json.JSONDecodeError as err:
        raise EdgeKDError(f"{where} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})", fix) from None
    except RecursionError:
        raise EdgeKDError(f"{where} is nested too deeply to be an edgekd file", fix) from None
    except ValueError as err:  # from _json_constant
        raise EdgeKDError(f"{where} is not valid JSON ({err})", fix) from None


def read_json(path: str | os.PathLike, what: str, fix: str):
    """Read and parse a JSON file edgekd consumes; every way it can be wrong is a one-line EdgeKDError."""
    return parse_json(read_text_file(path, what, fix), f"{what} {path}", fix)


def _user_dir(variable: str, platform_dir) -> Path:
    """$variable if set, else the platform's folder; a file where the folder should be is a one-line error."""
    env = os.environ.get(variable)
    path = Path(env).expanduser() if env else Path(platform_dir("edgekd"))
    if path.exists() and not path.is_dir():
        where = f"{variable}={env}" if env else str(path)
        raise EdgeKDError(f"{where} is a file, not a folder", f"point {variable} to a folder (or unset it)")
    return path


def config_dir() -> Path:
    """User config folder: calibrations (EDGEKD_CONFIG_DIR overrides, which tests use to stay isolated)."""
    from platformdirs import user_config_dir

    return _user_dir("EDGEKD_CONFIG_DIR", user_config_dir)


def cache_dir() -> Path:
    """User cache folder: teachers, exported graphs, decoded images (EDGEKD_CACHE_DIR overrides)."""
    return cache_root()


# Leading bytes of files users hand edgekd by mistake, to say what a file is when it is not what was asked for.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"BM", "a BMP image"), (b"RIFF", "a RIFF file (WebP image or audio)"), (b"%PDF", "a PDF document"),
          (b"\x1f\x8b", "a gzip archive"), (b"PK\x03\x04", "a ZIP archive"), (b"\x93NUMPY", "a NumPy .npy array"),
          (b"\x80", "a Python pickle"), (b"{", "JSON text"), (b"[", "JSON text"))


def what_file_is(path: str | os.PathLike) -> str | None:
    """'a folder', 'an empty file', 'a PNG image'... for a file that turned out not to be what was asked for."""
    path = Path(path)
    if path.is_dir():
        return "a folder"
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    if not head:
        return "an empty file"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)
