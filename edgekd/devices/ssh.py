"""SSH transport to a device through the system OpenSSH client: one shared connection, checked host keys.

Why the system ``ssh`` rather than a Python SSH library: it already honours everything a team has set up
for its devices (``~/.ssh/config`` aliases, ProxyJump through a lab gateway, the agent, hardware keys,
``known_hosts`` with hashed entries, certificates), with no new dependency and no second copy of the
host-key policy. Every call runs with ``BatchMode=yes`` (never a password prompt that would hang) and
``StrictHostKeyChecking=yes`` (an unknown or changed host key is an error with the command that trusts
it, never trusted silently). One master connection (``ControlMaster``) carries every step of a command,
so a handshake (0.3-1 s on an ARM board) is paid once, not per file.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.devices.store import Device
from edgekd.errors import EdgeKDError

CONNECT_TIMEOUT_S = 10
ATTEMPTS = 3            # tries of one step when the connection drops or times out while connecting
BACKOFF_S = 0.5         # wait before the 2nd try; doubled before each later one
CONTROL_PERSIST_S = 60  # the master outlives a crashed edgekd by this much at most
SSH_CONFIG_ENV = "EDGEKD_SSH_CONFIG"  # an ssh config file to use instead of ~/.ssh/config (tests, CI)
WORKDIR_PREFIX = "edgekd."


class DeviceError(EdgeKDError):
    """A failure on or on the way to a device; ``transient`` ones may succeed when retried."""

    def __init__(self, message: str, hint: str | None = None, *, transient: bool = False, stdout: bytes = b""):
        super().__init__(message, hint)
        self.transient = transient
        self.stdout = stdout  # what the command printed before it failed


# stderr of a failed ssh -> (kind, transient). Order matters: a changed key also says "verification failed".
_FAILURES = (
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "host-key-changed", False),
    ("host key is known for", "host-key-unknown", False),
    ("Host key verification failed", "host-key-unknown", False),
    ("Permission denied", "auth", False),
    ("Too many authentication failures", "auth", False),
    ("Connection refused", "refused", False),
    ("Could not resolve hostname", "unresolved", False),
    ("No route to host", "unreachable", True),
    ("Network is unreachable", "unreachable", True),
    ("timed out", "unreachable", True),
    ("Connection closed", "dropped", True),
    ("Connection reset", "dropped", True),
    ("closed by remote host", "dropped", True),
    ("Broken pipe", "dropped", True),
    ("read header failed", "dropped", True),
    ("send disconnect", "dropped", True),
    ("not responding", "dropped", True),
    ("kex_exchange_identification", "dropped", True),
)


def classify(stderr: str) -> tuple[str, bool]:
    if not stderr.strip():  # a client multiplexed on a master that died exits 255 without a word
        return "dropped", True
    for needle, kind, transient in _FAILURES:
        if needle in stderr:
            return kind, transient
    return "other", False


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith(("@", "Warning:"))]
    return lines[-1][:300] if lines else "no message"


def control_dir() -> Path:
    """Private folder for master-connection sockets (short: a UNIX socket path must fit in ~100 bytes)."""
    folder = Path(tempfile.gettempdir()) / f"edgekd-ssh-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise EdgeKDError(f"{folder} is not a private folder of this user", f"remove it (rm -r {folder}) and retry")
    return folder


@dataclass
class Connection:
    """The SSH link to one device; use as a context manager so the master connection is closed."""

    device: Device
    connect_timeout: int = CONNECT_TIMEOUT_S
    attempts: int = ATTEMPTS
    backoff_s: float = BACKOFF_S
    timings: dict = field(default_factory=dict)   # step -> seconds, summed over calls
    retries: int = 0
    sent_bytes: int = 0
    leftovers: list = field(default_factory=list)  # work folders a dropped copy left on the device
    _resolved: dict | None = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the ssh command line ----------------------------------------------------------------

    @property
    def control_path(self) -> Path:
        key = "\0".join([self.device.name, self.device.ssh, os.environ.get(SSH_CONFIG_ENV, "")])
        return control_dir() / hashlib.sha256(key.encode()).hexdigest()[:16]

    def _options(self) -> list[str]:
        config = os.environ.get(SSH_CONFIG_ENV)
        args = ["-F", config] if config else []
        args += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                 "-o", f"ConnectTimeout={self.connect_timeout}",
                 # a device that vanishes mid-run (power, Wi-Fi) is noticed in ~15 s instead of a TCP timeout
                 "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                 "-o", f"ControlPath={self.control_path}"]
        if self.device.port:
            args += ["-p", str(self.device.port)]
        return args

    def ssh_args(self, command: str | None = None) -> list[str]:
        """argv for one command over the master connection (or a direct one if the master is gone)."""
        args = ["ssh", *self._options(), "-o", "ControlMaster=no", "-T", self.device.destination]
        return args + ["--", command] if command is not None else args

    def resolved(self) -> dict:
        """What ssh will really connect to (aliases and ~/.ssh/config applied): user, hostname, port, known_hosts."""
        if self._resolved is None:
            out = subprocess.run(["ssh", *self._options(), "-G", self.device.destination], capture_output=True,
                                 text=True, timeout=30)
            conf = {}
            for line in out.stdout.splitlines():
                key, _, value = line.partition(" ")
                conf.setdefault(key.lower(), value)
            self._resolved = conf
        return self._resolved

    # --- connecting and failing clearly -------------------------------------------------------

    def connect(self) -> float:
        """Open (or reuse) the master connection; seconds it took. Raises DeviceError naming the device."""
        t0 = time.perf_counter()
        if self._master_alive():
            return 0.0
        self.control_path.unlink(missing_ok=True)  # a stale socket of a master that died
        # -f: background after authentication. stderr goes to a file, not a pipe: the backgrounded
        # master keeps it open, and a pipe would never reach EOF.
        with tempfile.TemporaryFile() as err:
            args = ["ssh", *self._options(), "-o", "ControlMaster=yes",
                    "-o", f"ControlPersist={CONTROL_PERSIST_S}", "-f", "-N", self.device.destination]
            try:
                code = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=self.connect_timeout * 3 + 10).returncode
            except subprocess.TimeoutExpired:
                code = None
            err.seek(0)
            text = err.read().decode("utf-8", "replace") if code is not None else "Connection timed out"
        self._add_time("connect", time.perf_counter() - t0)
        if code != 0:
            raise self.failure(text, "connecting")
        return time.perf_counter() - t0

    def retrying(self, fn, what: str):
        """Call ``fn()`` over a fresh or reused connection; redo it when the connection dropped (bounded, backoff).

        ``fn`` must be safe to repeat from the start (each remote run makes its own work folder).
        """
        for attempt in range(self.attempts):
            if attempt:
                self.retries += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                self.connect()
                return fn()
            except DeviceError as err:
                if not err.transient or attempt + 1 == self.attempts:
                    raise
        raise AssertionError(what)

    def _master_alive(self) -> bool:
        if not self.control_path.exists():
            return False
        check = subprocess.run(["ssh", *self._options(), "-O", "check", self.device.destination],
                               capture_output=True, timeout=30)
        return check.returncode == 0

    def failure(self, stderr: str, step: str) -> DeviceError:
        """The one-line error for a failed ssh, naming the device and what to do."""
        kind, transient = classify(stderr)
        conf = self.resolved()
        name, host = self.device.name, conf.get("hostname", self.device.host)
        port, user = conf.get("port", str(self.device.port or 22)), conf.get("user", self.device.user or "")
        known = (conf.get("userknownhostsfile") or "~/.ssh/known_hosts").split()[0]
        p = f"-p {port} " if port != "22" else ""
        where = f"{user}@{host}" if user else host
        keyname = f"[{host}]:{port}" if port != "22" else host
        messages = {
            "host-key-unknown": (
                f"device {name}: the host key of {keyname} is not in {known}, so it cannot be verified",
                f"check its fingerprint (ssh-keyscan {p}{host} | ssh-keygen -lf -), then trust it with: "
                f"ssh-keyscan {p}{host} >> {known} (or connect once by hand: ssh {p}{where})"),
            "host-key-changed": (
                f"device {name}: the host key of {keyname} has CHANGED since it was trusted",
                f"if the device was reinstalled, remove the old key with ssh-keygen -f {known} -R '{keyname}' and "
                "trust the new one; otherwise do not connect (someone may be intercepting)"),
            "auth": (
                f"device {name}: {where} refused the SSH key (Permission denied)",
                f"install your public key there (ssh-copy-id {p}{where}), or load the right key into your agent "
                f"(ssh-add) or name it with IdentityFile for {host} in ~/.ssh/config"),
            "refused": (
                f"device {name}: {host} port {port} refused the connection",
                f"check that the device is on and its SSH server runs (ssh {p}{where} true), and that the port "
                f"is right (`edgekd devices add {name} --ssh user@host:port --replace ...`)"),
            "unresolved": (
                f"device {name}: the host name {host} does not resolve",
                f"check the address (`edgekd devices add {name} --ssh user@ADDRESS --replace ...`) or your DNS"),
            "unreachable": (
                f"device {name}: {host} port {port} is unreachable while {step} ({_last_line(stderr)})",
                f"check that it is powered on and on this network (ping {host}); the retries ({self.attempts}) are spent"),
            "dropped": (
                f"device {name}: the connection to {host} dropped while {step} ({self.attempts} attempts)",
                "check the device's network and power (a board that browns out under load drops off), then rerun"),
            "other": (
                f"device {name}: ssh to {where} failed while {step}: {_last_line(stderr)}",
                f"run ssh -v {p}{where} true to see why"),
        }
        message, hint = messages[kind]
        return DeviceError(message, hint, transient=transient)

    # --- running commands ---------------------------------------------------------------------

    def run(self, command: str, *, step: str, timeout: float, stdin: bytes | io.BufferedReader | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command on the device once; DeviceError (transient for a dropped link) on failure.

        ``check``: a non-zero exit of the command itself raises DeviceError with its last stderr line.
        """
        if hasattr(stdin, "seek"):
            stdin.seek(0)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(self.ssh_args(command), input=stdin if isinstance(stdin, bytes) else None,
                                  stdin=None if isinstance(stdin, bytes) else (stdin or subprocess.DEVNULL),
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self._timed_out(step, timeout) from None
        finally:
            self._add_time(step, time.perf_counter() - t0)
        return self._checked(proc, step, check)

    def _checked(self, proc: subprocess.CompletedProcess, step: str, check: bool) -> subprocess.CompletedProcess:
        if proc.returncode == 255:  # ssh's own failure (no command of ours exits 255)
            failure = self.failure(proc.stderr.decode("utf-8", "replace"), step)
            failure.stdout = proc.stdout
            raise failure
        if check and proc.returncode != 0:
            raise DeviceError(f"device {self.device.name}: {step} failed (exit {proc.returncode}): "
                              f"{_last_line(proc.stderr.decode('utf-8', 'replace'))}",
                              "rerun with --debug, or run the step by hand over ssh")
        return proc

    def _timed_out(self, step: str, timeout: float) -> DeviceError:
        return DeviceError(f"device {self.device.name}: {step} did not finish within {timeout:g} s",
                           "check the device is responsive (ssh to it, look at its load), or raise --timeout")

    def _add_time(self, step: str, seconds: float) -> None:
        self.timings[step] = round(self.timings.get(step, 0.0) + seconds, 4)

    # --- files ------------------------------------------------------------------------------------

    def put(self, files: dict[str, Path]) -> str:
        """Copy local files (name there -> local path) into a fresh private folder on the device; its path.

        One call: ``mktemp -d`` prints the folder, and the device waits for a "go" line before it
        starts tar: the tar stream is sent only once the folder's path is here (kept in
        ``self.leftovers`` until the copy succeeds), so a copy cut short always names what to clean up.
        A link that drops before "go" arrives makes the device remove the empty folder itself.
        """
        base = _remote_path(self.device.workdir) if self.device.workdir else '"${TMPDIR:-/tmp}"'
        # sh -c: the login shell may be fish or csh; every script edgekd runs there is POSIX sh.
        # `read` takes exactly one line from a pipe, leaving the tar stream to tar.
        script = (f'base={base} && mkdir -p "$base" && d=$(mktemp -d "$base/{WORKDIR_PREFIX}XXXXXXXX") && '
                  'echo "$d" && { read go || { rmdir "$d"; exit 1; }; } && tar -xf - -C "$d"')
        step = "copying files"
        with tempfile.TemporaryFile() as stream, tempfile.TemporaryFile() as err:
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, path in files.items():
                    tar.add(str(path), arcname=name, recursive=False)
            size = stream.tell()
            stream.seek(0)
            timeout = 120 + size / 1e6  # >= 1 MB/s
            t0 = time.perf_counter()
            # stderr to a file: only stdout is read while the stream is written (tar -x prints nothing there)
            ssh = subprocess.Popen(self.ssh_args(f"sh -c {shlex.quote(script)}"), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=err)
            expired = threading.Event()
            timer = threading.Timer(timeout, lambda: (expired.set(), ssh.kill()))
            timer.start()
            try:
                first = ssh.stdout.readline()
                known = _workdirs_in(first)
                self.leftovers += known
                try:
                    if known:
                        ssh.stdin.write(b"go\n")
                        shutil.copyfileobj(stream, ssh.stdin, 1 << 20)
                except BrokenPipeError:  # the link dropped or the device gave up: the exit code says which
                    pass
                finally:
                    try:
                        ssh.stdin.close()
                    except BrokenPipeError:
                        pass
                stdout = first + ssh.stdout.read()
                ssh.wait()
            finally:
                timer.cancel()
                if ssh.poll() is None:
                    ssh.kill()
                    ssh.wait()
                self._add_time(step, time.perf_counter() - t0)
            if expired.is_set():
                raise self._timed_out(step, timeout)
            err.seek(0)
            proc = self._checked(subprocess.CompletedProcess(ssh.args, ssh.returncode, stdout, err.read()), step, True)
        for w in known:
            self.leftovers.remove(w)
        self.sent_bytes += size
        found = _workdirs_in(proc.stdout)
        if len(found) != 1:
            raise DeviceError(f"device {self.device.name}: mktemp printed {proc.stdout[:200]!r}, not a folder",
                              "check that mktemp works there, or pass --workdir to `edgekd devices add`")
        return found[0]

    def run_in(self, workdir: str, command: str, *, step: str, timeout: float, fetch: list[str],
               keep: bool = False) -> tuple[int, dict[str, bytes]]:
        """Run ``command`` in ``workdir`` (output to files there), bring ``fetch`` back, then delete the folder.

        One call: the command's stdout/stderr land in files (fetch them by name), a tar of the fetched
        files comes back on stdout, and the folder is removed on the device even when the command failed
        or the connection dropped meanwhile. Returns (the command's exit code, name -> bytes).
        """
        quoted = " ".join(shlex.quote(n) for n in fetch)
        wd = shlex.quote(workdir)
        script = (f"cd {wd} || exit 97\n{command}\nrc=$?\nset --\n"
                  f'for f in {quoted}; do [ -f "$f" ] && set -- "$@" "$f"; done\n'
                  '[ $# -eq 0 ] || tar -cf - "$@"\n'
                  + ("" if keep else f"cd / && rm -rf -- {wd}\n") + "exit $rc\n")
        proc = self.run(f"sh -c {shlex.quote(script)}", step=step, timeout=timeout, check=False)
        if proc.returncode == 97:
            raise DeviceError(f"device {self.device.name}: the work folder {workdir} vanished before {step}",
                              "something on the device cleans its temporary folder; pass --workdir to `edgekd devices add`")
        out: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:") as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name in fetch:
                        out[member.name] = tar.extractfile(member).read()
        except tarfile.TarError:
            pass  # nothing came back: the caller says which file is missing and why
        return proc.returncode, out

    def remove_workdirs(self, workdirs) -> bool:
        """Delete folders made by put(); False (never an exception) when the device cannot be reached."""
        paths = [w for w in workdirs if w]
        for w in paths:
            if f"/{WORKDIR_PREFIX}" not in w:
                raise ValueError(f"refusing to delete {w!r}: not an edgekd work folder")
        if not paths:
            return True
        try:
            self.run("rm -rf -- " + " ".join(shlex.quote(w) for w in paths), step="cleaning up", timeout=60)
            return True
        except EdgeKDError:
            return False

    def close(self) -> None:
        """Close the master connection (no-op when there is none)."""
        if self.control_path.exists():
            subprocess.run(["ssh", *self._options(), "-O", "exit", self.device.destination],
                           capture_output=True, timeout=30)


def _workdirs_in(stdout: bytes) -> list[str]:
    lines = stdout.decode("utf-8", "replace").splitlines() if stdout else []
    return [ln.strip() for ln in lines if ln.startswith("/") and f"/{WORKDIR_PREFIX}" in ln]


def _remote_path(path: str) -> str:
    """Quote a remote path for sh, keeping a leading ~/ as $HOME (quoting would stop the shell expanding it)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def remote_command(path: str) -> str:
    """A program on the device (``python3``, ``/usr/bin/python3.8``, ``~/venv/bin/python``) quoted for sh."""
    return _remote_path(path)
