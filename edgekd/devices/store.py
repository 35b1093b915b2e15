"""The user's own devices (name -> SSH address, target, python, work folder), kept in the user config folder."""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgekd.errors import EdgeKDError

STORE_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# `edgekd distill --device` also takes the training device (auto, cpu, cuda, cuda:N), and "host" labels
# timings taken on this machine (measured:host): a device of any of these names would be ambiguous.
RESERVED_NAMES = ("auto", "cpu", "cuda", "host", "mps")
_SSH_FORM = re.compile(r"^(?:(?P<user>[^@\s/]+)@)?(?:\[(?P<ipv6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^@:\s/\[\]]+))(?::(?P<port>\d+))?$")


@dataclass
class Device:
    """One device a user measures on: where it is, what it is (a target profile) and how to run Python there."""

    name: str
    ssh: str                        # as typed: user@host[:port]; host may be an alias from ~/.ssh/config
    target: str                     # a target name or the absolute path of a profile .yaml
    python: str = "python3"        # interpreter on the device: a name looked up on its PATH, or a path
    workdir: str | None = None      # remote folder for per-run temporary folders (default: $TMPDIR or /tmp)
    added: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def user(self) -> str | None:
        return parse_ssh(self.ssh)[0]

    @property
    def host(self) -> str:
        return parse_ssh(self.ssh)[1]

    @property
    def port(self) -> int | None:
        return parse_ssh(self.ssh)[2]

    @property
    def destination(self) -> str:
        """What ssh is given: user@host (the port travels as -p)."""
        user, host, _ = parse_ssh(self.ssh)
        return f"{user}@{host}" if user else host

    def to_dict(self) -> dict:
        return asdict(self)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise EdgeKDError(f"device name {name!r} is not usable",
                          "use letters, digits, '.', '_' or '-' (at most 64), starting with a letter or digit")
    if name.lower() in RESERVED_NAMES or name.lower().startswith("cuda:"):
        raise EdgeKDError(f"device name {name!r} is reserved (distill --device also takes auto, cpu, cuda; "
                          "measured:host means this machine)", "choose another name, e.g. lab-nano")
    return name


def parse_ssh(spec: str) -> tuple[str | None, str, int | None]:
    """``user@host[:port]`` (or ``user@[ipv6]:port``) -> (user, host, port); one-line error otherwise."""
    m = _SSH_FORM.match(spec.strip()) if isinstance(spec, str) else None
    if not m:
        raise EdgeKDError(f"--ssh {spec!r} is not an SSH address",
                          "use user@host, user@host:port or user@[ipv6]:port, e.g. ubuntu@192.168.1.40")
    host = m.group("ipv6") or m.group("host")
    if host.startswith("-"):  # would be read by ssh as an option
        raise EdgeKDError(f"--ssh host {host!r} starts with '-'", "give a host name or address")
    port = m.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise EdgeKDError(f"--ssh port {port} is out of range", "a TCP port is 1 to 65535 (SSH listens on 22)")
    return m.group("user"), host, int(port) if port else None


def store_path() -> Path:
    from edgekd.hardware.targets import config_dir

    return config_dir() / "devices.json"


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        devices = data["devices"]
        return {name: Device(**{k: v for k, v in d.items() if k in Device.__dataclass_fields__})
                for name, d in devices.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise EdgeKDError(f"the device list {path} is unreadable",
                          "fix or delete it and add the devices again with `edgekd devices add`") from None


def _write(path: Path, devices: dict) -> None:
    from edgekd.fsutil import atomic_write_json

    atomic_write_json(path, {"version": STORE_VERSION,
                             "devices": {name: d.to_dict() for name, d in sorted(devices.items())}})


def list_devices() -> list[Device]:
    return list(_read(store_path()).values())


def registered_targets() -> dict[str, str]:
    """Each registered device's name -> its target (none when the device list is missing or unreadable)."""
    try:
        return {name: d.target for name, d in _read(store_path()).items()}
    except EdgeKDError:
        return {}


def get_device(name: str) -> Device:
    devices = _read(store_path())
    if name not in devices:
        from edgekd.registry import suggest

        if not devices:
            raise EdgeKDError(f"unknown device {name!r} (none is registered yet)",
                              "add it with `edgekd devices add NAME --ssh user@host --target T`")
        raise EdgeKDError(f"unknown device {name!r}", suggest(name, devices, "device"))  # the hint lists them once
    return devices[name]


def _resolve_target(target: str) -> str:
    """A shipped target's name, or the absolute path of a profile file (so the device works from any folder)."""
    from edgekd.hardware.targets import load_target

    load_target(target)  # one-line error for a typo or an invalid profile, now rather than at measuring time
    if target.endswith((".yaml", ".yml")) or "/" in target:
        return str(Path(target).expanduser().resolve())
    return target


def add_device(name: str, ssh: str, target: str, *, python: str = "python3", workdir: str | None = None,
               replace: bool = False) -> Device:
    """Validate and store a device (atomically, under a lock); an existing name needs ``replace``."""
    from edgekd.fsutil import wait_lock

    check_name(name)
    parse_ssh(ssh)
    if not python or any(c in python for c in "\n\0"):
        raise EdgeKDError(f"--python {python!r} is not a usable interpreter", "e.g. python3 or /usr/bin/python3.8")
    if workdir is not None and (not workdir.startswith(("/", "~")) or any(c in workdir for c in "\n\0")):
        raise EdgeKDError(f"--workdir {workdir!r} must be an absolute path on the device", "e.g. /home/ubuntu/edgekd")
    device = Device(name=name, ssh=ssh.strip(), target=_resolve_target(target), python=python, workdir=workdir,
                    added=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    path = store_path()
    with wait_lock(path.with_suffix(".lock")):
        devices = _read(path)
        if name in devices and not replace:
            raise EdgeKDError(f"device {name!r} already exists ({devices[name].ssh}, {devices[name].target})",
                              f"pass --replace to change it, or `edgekd devices remove {name}` first")
        devices[name] = device
        _write(path, devices)
    return device


def remove_device(name: str) -> Device:
    from edgekd.fsutil import wait_lock

    path = store_path()
    with wait_lock(path.with_suffix(".lock")):
        device = get_device(name)
        devices = _read(path)
        del devices[name]
        _write(path, devices)
    return device
