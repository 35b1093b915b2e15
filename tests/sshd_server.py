"""A real OpenSSH server on 127.0.0.1 for the device tests: temporary host key, authorized key, known_hosts, config.

Nothing here touches ~/.ssh: the client side is a config file (``ssh -F``, through EDGEKD_SSH_CONFIG)
naming the test's key and known_hosts, with the agent off.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def sshd_unavailable() -> str | None:
    """Why a test sshd cannot start here (None when it can)."""
    if not Path(SSHD).is_file():
        return f"{SSHD} is not installed (apt-get install openssh-server; .ci/run does)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"the OpenSSH client ({tool}) is not installed"
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        try:  # sshd run as root insists on its privilege-separation folder (the service would create it)
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        except OSError as err:
            return f"/run/sshd is missing and cannot be created: {err}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekd-test", "-f", str(path)], check=True)
    return path


class SSHServer:
    """``sshd -D -f <config>`` on a free port; ``config`` is the client ssh config that reaches it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.host_key = keygen(self.root / "host_key")
        self.user_key = keygen(self.root / "user_key")
        self.bad_key = keygen(self.root / "bad_key")  # never authorized
        (self.root / "authorized_keys").write_text((self.root / "user_key.pub").read_text())
        self.known_hosts = self.root / "known_hosts"
        self.empty_known_hosts = self.root / "empty_known_hosts"
        self.empty_known_hosts.write_text("")
        self.config = self.root / "ssh_config"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SSHServer":
        self.port = free_port()
        cfg = self.root / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PidFile none",
            f"AllowUsers {self.user}", "MaxSessions 50", "MaxStartups 50", "LogLevel INFO", ""]))
        host_pub = (self.root / "host_key.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        # Specific hosts first: for each option ssh keeps the first value it reads.
        self.config.write_text("\n".join([
            "Host loop-badkey", f"  IdentityFile {self.bad_key}",
            "Host loop-unknown", f"  UserKnownHostsFile {self.empty_known_hosts}",
            "Host * !loop-badkey", f"  IdentityFile {self.user_key}",  # IdentityFile adds up: keep it off badkey
            "Host *", "  HostName 127.0.0.1", f"  Port {self.port}", f"  User {self.user}",
            "  IdentitiesOnly yes", "  IdentityAgent none",
            "  GlobalKnownHostsFile /dev/null", f"  UserKnownHostsFile {self.known_hosts}", ""]))
        self.log = open(self.root / "sshd.log", "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 15 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        sessions = [pid for pid, _ in descendants(self.proc.pid)]
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in sessions:  # connections outlive the listener; end ours
            _kill(pid, signal.SIGKILL)
        self.proc = None
        self.log.close()

    def env(self, **extra) -> dict:
        return {**os.environ, "EDGEKD_SSH_CONFIG": str(self.config), **extra}

    def ssh_spec(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"


def _kill(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode("utf-8", "replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def descendants(root: int) -> list[tuple[int, list[int]]]:
    """(pid, chain of ancestors below ``root``) of every process under ``root``."""
    tree = _children()
    out, stack = [], [(root, [])]
    while stack:
        pid, chain = stack.pop()
        for child in tree.get(pid, []):
            out.append((child, chain))
            stack.append((child, chain + [child]))
    return out


class Killer:
    """Watches the processes a test sshd runs; when one matches, kills its connection (or just it).

    ``connection=True`` freezes the matched process and kills the sshd processes that carry its
    connection: the client sees the link drop mid-transfer. ``connection=False`` kills the matched
    process itself (a runner crashing on the device). ``times``: how many matches to act on, after
    letting the first ``skip`` run.

    A process forked by a matched one is part of it, not a new match: until it execs, a fork (the runner's
    ``platform.processor()`` vforks ``uname -p``) shows its parent's command line in /proc.
    """

    def __init__(self, server: SSHServer, match, *, connection: bool = True, times: int = 1_000_000, skip: int = 0):
        self.server, self.match, self.connection, self.times, self.skip = server, match, connection, times, skip
        self.hits = self.skipped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "Killer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        seen: set[int] = set()
        matched: set[int] = set()
        while not self._stop.is_set() and self.hits < self.times:
            for pid, chain in descendants(self.server.proc.pid):
                if pid in seen or not self.match(_cmdline(pid)):
                    continue
                seen.add(pid)
                if matched.intersection(chain):  # a fork of a matched process (parents come first)
                    continue
                matched.add(pid)
                if self.skipped < self.skip:  # let the first matches through
                    self.skipped += 1
                    continue
                self.hits += 1
                if self.connection:
                    _kill(pid, signal.SIGSTOP)
                    for sshd in chain:
                        if any("sshd" in a for a in _cmdline(sshd)[:1]):
                            _kill(sshd, signal.SIGKILL)
                    _kill(pid, signal.SIGKILL)
                else:
                    _kill(pid, signal.SIGKILL)
                if self.hits >= self.times:
                    return
            time.sleep(0.003)
