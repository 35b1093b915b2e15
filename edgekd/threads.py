"""Thread policy: how many CPU threads this job may use, from the CPUs it may run on and the other edgekd jobs here.

A job may use the CPUs of its affinity mask, narrowed by a cgroup CPU quota (containers). Every edgekd
job registers itself in a per-user folder of the machine (one file per process, removed when it ends; a file whose
process is gone is ignored and deleted), and the usable CPUs are split between the live jobs: two jobs
on two cores take one thread each instead of two threads each that preempt one another at every
parallel region. torch's intra-op threads, ONNX Runtime and OpenVINO sessions and the loader's worker
processes all read :func:`current`.

An explicit ``--threads`` is the user's word: it is used as given, and the job still registers, so the
others make room for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

JOBS_FOLDER = "jobs"
ENV_JOBS_DIR = "EDGEKD_JOBS_DIR"   # one registry for jobs with different caches (tests use it too)

_state: dict = {"explicit": None, "slot": None, "applied": None}


def usable_cpus(cpu_max_path: str | None = None) -> int:
    """Threads this process may run at once: its affinity mask, narrowed by a cgroup CPU quota, and at
    most one per physical core (a second thread on a core's sibling slows oneDNN and MLAS kernels down,
    which is why torch and ONNX Runtime default to the physical count)."""
    from edgekd.bench.env import cpu_info, usable_cores

    n = usable_cores(cpu_max_path) if cpu_max_path else usable_cores()
    physical = cpu_info().get("physical_cores")
    return max(1, min(n, physical or n))


def jobs_dir() -> Path:
    """One registry per user and machine, not per cache: two jobs with different caches (CI jobs, a
    user's second project) still share the same cores. ``$XDG_RUNTIME_DIR`` where the session has one,
    else the temporary folder."""
    env = os.environ.get(ENV_JOBS_DIR)
    if env:
        return Path(env).expanduser()
    import tempfile

    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / f"edgekd-{JOBS_FOLDER}"
    return Path(tempfile.gettempdir()) / f"edgekd-{JOBS_FOLDER}-{os.getuid()}"


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, /proc/PID/stat field 22): a reused pid has another."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    now = _start_time(pid)
    return started is None or now is None or now == started


def live_jobs(folder: Path | None = None) -> list[dict]:
    """The registered jobs whose process still runs, oldest first; stale entries are deleted."""
    folder = folder or jobs_dir()
    jobs = []
    try:
        entries = list(folder.glob("*.json"))
    except OSError:
        return []
    for path in entries:
        try:
            job = json.loads(path.read_text())
            pid = int(job["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours
        if _alive(pid, job.get("started")):
            jobs.append(job)
        else:
            try:
                path.unlink()
            except OSError:
                pass
    return sorted(jobs, key=lambda j: (float(j.get("since", 0)), int(j["pid"])))


def share(cpus: int, jobs: list[dict], pid: int) -> int:
    """This job's threads when ``jobs`` (oldest first) split ``cpus``: jobs with an explicit count take
    theirs, the rest share what is left evenly (the older ones get the remainder), at least one each.
    A job blocked on another's lock (``waiting``: the same teacher being trained) takes no share."""
    jobs = [j for j in jobs if not j.get("waiting") or int(j["pid"]) == pid]
    fixed = sum(int(j["threads"]) for j in jobs if j.get("threads") and int(j["pid"]) != pid)
    flexible = [int(j["pid"]) for j in jobs if not j.get("threads")]
    if pid not in flexible:
        flexible.append(pid)
    free = max(len(flexible), cpus - fixed)
    base, extra = divmod(free, len(flexible))
    return max(1, base + (1 if flexible.index(pid) < extra else 0))


class JobSlot:
    """This process's entry in the job registry, for as long as the job runs."""

    def __init__(self, threads: int | None = None, folder: Path | None = None):
        self.folder = folder or jobs_dir()
        self.pid = os.getpid()
        self.path = self.folder / f"{self.pid}.json"
        self.record = {"pid": self.pid, "started": _start_time(self.pid), "since": time.time(), "threads": threads}

    def __enter__(self) -> "JobSlot":
        from edgekd.fsutil import atomic_write_json

        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write_json(self.path, self.record)
        except OSError:
            pass  # an unwritable registry: the job runs with the CPUs alone, unaware of the others
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass


def threads_for(cpus: int | None = None, folder: Path | None = None) -> int:
    """Threads for this process now: the explicit count if one was configured, else its share."""
    if _state["explicit"]:
        return int(_state["explicit"])
    cpus = cpus or usable_cpus()
    return share(cpus, live_jobs(folder), os.getpid())


@contextlib.contextmanager
def waiting():
    """Mark this job as blocked while the block runs, so that the job it waits for gets its cores (at
    that job's next :func:`apply`, once an epoch)."""
    slot = _state["slot"]
    if slot is None:
        yield
        return
    slot.record["waiting"] = True
    slot.__enter__()
    try:
        yield
    finally:
        slot.record.pop("waiting", None)
        slot.__enter__()


def current() -> int:
    """Threads runtimes, torch and the loader should use now (see the module docstring)."""
    return threads_for()


def loader_workers() -> int:
    """Loader worker processes for photo data: this job's threads but one for the model, at least 1, at most 8."""
    return max(1, min(8, current() - 1))


def configure(threads: int | None = None):
    """Register this job and set torch's intra-op threads from the policy; returns the JobSlot (a context
    manager that unregisters the job) already entered. ``threads``: an explicit count (``--threads``)."""
    _state["explicit"] = threads
    slot = _state["slot"]
    if slot is None or slot.pid != os.getpid():
        slot = JobSlot(threads).__enter__()
        _state["slot"] = slot
        import atexit

        atexit.register(slot.__exit__)
    elif slot.record["threads"] != threads:  # another run in the same process (the Python API, tests)
        slot.record["threads"] = threads
        slot.__enter__()
    apply()
    return slot


def apply() -> int:
    """Set torch's intra-op threads to :func:`current` when it changed (another job started or ended);
    cheap enough to call once an epoch. Nothing unless :func:`configure` was called (library use keeps
    the caller's settings)."""
    if _state["slot"] is None:
        return torch_threads()
    n = current()
    if n != _state["applied"]:
        import torch

        torch.set_num_threads(n)
        _state["applied"] = n
    return n


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def release() -> None:
    """Unregister this job (the end of a run in a long-lived process, such as a test session)."""
    slot = _state["slot"]
    if slot is not None:
        slot.__exit__()
    _state.update(explicit=None, slot=None, applied=None)
