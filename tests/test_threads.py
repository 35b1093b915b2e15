"""Thread policy: the CPUs a job may use (affinity, cgroup quota) split between the edgekd jobs running here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from edgekd import threads
from edgekd.bench.env import usable_cores

TWO_CPUS = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset")


def test_share_splits_the_cpus_between_jobs_oldest_first():
    jobs = [{"pid": 11}, {"pid": 22}]
    assert [threads.share(2, jobs, p) for p in (11, 22)] == [1, 1]
    assert [threads.share(3, jobs, p) for p in (11, 22)] == [2, 1]
    assert [threads.share(8, jobs, p) for p in (11, 22)] == [4, 4]
    # More jobs than cores: one thread each, never zero.
    assert threads.share(2, [{"pid": p} for p in range(5)], 3) == 1
    # A job alone (not yet registered, e.g. a library call) has every CPU.
    assert threads.share(4, [], 99) == 4


def test_share_leaves_an_explicit_threads_count_its_cores():
    jobs = [{"pid": 1, "threads": 3}, {"pid": 2}, {"pid": 3}]
    assert threads.share(8, jobs, 2) == 3 and threads.share(8, jobs, 3) == 2
    assert threads.share(4, jobs, 2) == 1  # what is left is 1 core for two jobs: one thread each


@pytest.mark.parametrize("cpu_max, expected", [("max 100000", None), ("100000 100000", 1), ("150000 100000", 2),
                                                ("50000 100000", 1), ("garbage", None)])
def test_cgroup_v2_quota_narrows_the_cpus(tmp_path, cpu_max, expected):
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max + "\n")
    alone = usable_cores(str(tmp_path / "missing"), str(tmp_path / "missing"))
    assert usable_cores(str(path), str(tmp_path / "missing")) == (alone if expected is None else min(alone, expected))


def test_cgroup_v1_quota_narrows_the_cpus(tmp_path):
    (tmp_path / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(str(tmp_path / "missing"), str(tmp_path)) == 1
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")  # no limit
    assert usable_cores(str(tmp_path / "missing"), str(tmp_path)) == usable_cores(str(tmp_path / "x"), str(tmp_path / "x"))


def _python(code: str, env: dict, cpus: str | None = None, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-c", code]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus] + cmd
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, **kw)


@pytest.mark.skipif(not TWO_CPUS, reason="needs 2 CPUs and taskset")
def test_affinity_mask_sets_torch_threads_runner_threads_and_workers(tmp_path):
    env = dict(os.environ, EDGEKD_JOBS_DIR=str(tmp_path / "jobs"))
    code = ("import torch\nfrom edgekd import threads\nfrom edgekd.data.loader import default_workers\n"
            "threads.configure()\nprint(threads.usable_cpus(), torch.get_num_threads(), default_workers())")
    out = _python(code, env, cpus="0").communicate(timeout=120)[0].split()
    assert out == ["1", "1", "1"]
    out = _python(code, env, cpus="0,1").communicate(timeout=120)[0].split()
    assert out[:2] == ["2", "2"]


@pytest.mark.skipif(not TWO_CPUS, reason="needs 2 CPUs and taskset")
def test_two_real_jobs_split_the_cores_and_the_first_takes_them_back(tmp_path):
    """Two processes on the same two CPUs: alone a job takes both, together one each; when the second
    ends, the first's next epoch (threads.apply) takes both back; a killed job's entry is ignored."""
    env = dict(os.environ, EDGEKD_JOBS_DIR=str(tmp_path / "jobs"))
    code = ("import sys, torch\nfrom edgekd import threads\nthreads.configure()\n"
            "print(threads.current(), torch.get_num_threads(), flush=True)\n"
            "for line in sys.stdin:\n"
            "    print(threads.apply(), torch.get_num_threads(), flush=True)\n")
    first = _python(code, env, cpus="0,1")
    assert first.stdout.readline().split() == ["2", "2"]
    second = _python(code, env, cpus="0,1")
    try:
        assert second.stdout.readline().split() == ["1", "1"]
        first.stdin.write("epoch\n")
        first.stdin.flush()
        assert first.stdout.readline().split() == ["1", "1"]
        assert len(threads.live_jobs(tmp_path / "jobs")) == 2
    finally:
        second.kill()  # no clean exit: its registry entry stays behind
        second.wait()
    assert len(list((tmp_path / "jobs").glob("*.json"))) == 2
    first.stdin.write("epoch\n")
    first.stdin.flush()
    assert first.stdout.readline().split() == ["2", "2"]
    first.stdin.close()
    assert first.wait(timeout=60) == 0
    deadline = time.time() + 10
    while list((tmp_path / "jobs").glob("*.json")) and time.time() < deadline:
        threads.live_jobs(tmp_path / "jobs")  # the killed one's stale file is removed when read
        time.sleep(0.1)
    assert not list((tmp_path / "jobs").glob("*.json"))  # the clean exit removed its own


def test_explicit_threads_are_kept_and_announced_to_other_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_JOBS_DIR", str(tmp_path / "jobs"))
    import torch

    before = torch.get_num_threads()
    threads.release()  # an earlier in-process run of the suite registered this process in another jobs folder
    try:
        threads.configure(1)
        assert threads.current() == 1 and torch.get_num_threads() == 1
        (entry,) = threads.live_jobs(tmp_path / "jobs")
        assert entry["pid"] == os.getpid() and entry["threads"] == 1
    finally:
        threads.release()
        torch.set_num_threads(before)
    assert not list((tmp_path / "jobs").glob("*.json"))


def test_apply_does_nothing_unless_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_JOBS_DIR", str(tmp_path / "jobs"))
    import torch

    before = torch.get_num_threads()
    threads.release()
    assert threads.apply() == before == torch.get_num_threads()
    assert not (tmp_path / "jobs").exists()


def test_a_job_waiting_on_another_takes_no_share():
    jobs = [{"pid": 1}, {"pid": 2, "waiting": True}]
    assert threads.share(2, jobs, 1) == 2  # the job it waits for gets the cores
    assert threads.share(2, jobs, 2) == 1  # the waiter itself still counts itself


def test_the_registry_is_one_per_machine_not_one_per_cache(tmp_path, monkeypatch):
    """Two jobs with different caches (two CI jobs, two projects) share the same cores."""
    monkeypatch.delenv("EDGEKD_JOBS_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    (tmp_path / "runtime").mkdir()
    seen = set()
    for cache in ("a", "b"):
        monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path / cache))
        seen.add(threads.jobs_dir())
    assert seen == {tmp_path / "runtime" / "edgekd-jobs"}


@pytest.mark.skipif(not TWO_CPUS, reason="needs 2 CPUs and taskset")
def test_a_job_blocked_on_a_shared_cache_lock_gives_its_cores_to_the_holder(tmp_path):
    """Two runs that need the same teacher: the second waits on the first's lock; while it waits, the
    first trains with both cores (at its next epoch), and the waiter is marked in the registry."""
    env = dict(os.environ, EDGEKD_JOBS_DIR=str(tmp_path / "jobs"))
    lock = tmp_path / "teacher.lock"
    holder_code = ("import sys\nfrom edgekd import threads\nfrom edgekd.fsutil import wait_lock\n"
                   f"threads.configure()\nwith wait_lock({str(lock)!r}, while_waiting=threads.waiting):\n"
                   "    print('held', flush=True)\n"
                   "    for line in sys.stdin:\n"
                   "        print(threads.apply(), flush=True)\n")
    waiter_code = ("from edgekd import threads\nfrom edgekd.fsutil import wait_lock\nthreads.configure()\n"
                   "print('registered', flush=True)\n"
                   f"with wait_lock({str(lock)!r}, while_waiting=threads.waiting):\n"
                   "    print('got it', flush=True)\n"
                   "    input()\n"
                   "    print(threads.current(), flush=True)\n")
    holder = _python(holder_code, env, cpus="0,1")
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = _python(waiter_code, env, cpus="0,1")
        assert waiter.stdout.readline().strip() == "registered"
        deadline = time.time() + 30
        while time.time() < deadline and not any(j.get("waiting") for j in threads.live_jobs(tmp_path / "jobs")):
            time.sleep(0.1)
        assert [bool(j.get("waiting")) for j in threads.live_jobs(tmp_path / "jobs")] == [False, True]
        holder.stdin.write("epoch\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "2"  # the waiter's share went to the holder
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
        assert waiter.stdout.readline().strip() == "got it"
        assert [bool(j.get("waiting")) for j in threads.live_jobs(tmp_path / "jobs")] == [False]
        waiter.stdin.write("go\n")
        waiter.stdin.flush()
        assert waiter.stdout.readline().strip() == "2"  # alone now
        assert waiter.wait(timeout=60) == 0
    finally:
        for p in (holder, waiter):
            if p is not None and p.poll() is None:
                p.kill()
