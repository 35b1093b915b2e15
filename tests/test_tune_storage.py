"""--tune-storage: one Optuna study shared by several processes (and machines), by URL."""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import replace

import pytest
from conftest import packaged_subset, seeded_cnn

from edgekd.distill import TrainConfig
from edgekd.errors import EdgeKDError
from edgekd.models import ModelSpec

optuna = pytest.importorskip("optuna")

TINY = TrainConfig(epochs=1, batch_size=32, lr=1e-2, threads=1)


def _search(url: str, name: str, n_trials: int, work: str, queue) -> None:
    """One process of the shared search: its own data, teacher and student, the study from the URL."""
    from edgekd.distill.tune import tune_kd

    splits = packaged_subset(200, 50)
    result = tune_kd(ModelSpec("cnn", 10, 1, width=0.25), seeded_cnn(1, 1.0).eval(), splits, TINY,
                     n_trials=n_trials, minutes=5, work_dir=work, storage=url, study_name=name)
    queue.put(sorted(t["number"] for t in result.trials if t["state"] in ("complete", "pruned")))


@pytest.mark.parametrize("scheme", ["journal", "sqlite"])
def test_two_processes_share_one_study_and_both_see_every_trial(scheme, tmp_path):
    url = f"journal:///{tmp_path}/study.log" if scheme == "journal" else f"sqlite:///{tmp_path}/study.db"
    ctx = mp.get_context("spawn")  # never fork a process that may hold threads (torch, JAX)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_search, args=(url, "shared", 3, str(tmp_path / f"w{i}"), queue)) for i in range(2)]
    for p in procs:
        p.start()
    seen = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert seen[0] == seen[1] == [0, 1, 2]  # together exactly 3 trials, and both report all of them
    study = optuna.load_study(study_name="shared", storage=_storage(url))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    assert finished[0].params["temperature"] == TINY.temperature  # the defaults were queued once, as trial 1
    assert sum(t.params.get("temperature") == TINY.temperature and t.params.get("lr") == TINY.lr
               for t in finished) == 1


def _storage(url: str):
    from edgekd.distill.tune import open_storage

    return open_storage(url, None, True)[0]


def test_a_finished_shared_study_runs_nothing_more_and_reports_it(tmp_path):
    from edgekd.distill.tune import tune_kd

    splits, url = packaged_subset(300, 50), f"journal:///{tmp_path}/s.log"
    spec, teacher = ModelSpec("cnn", 10, 1, width=0.25), seeded_cnn(1, 1.0).eval()
    first = tune_kd(spec, teacher, splits, TINY, n_trials=2, minutes=5, work_dir=tmp_path / "a", storage=url,
                    study_name="s")
    again = tune_kd(spec, teacher, splits, TINY, n_trials=2, minutes=5, work_dir=tmp_path / "b", storage=url,
                    study_name="s")
    assert again.trials == first.trials and again.storage == url
    assert not (tmp_path / "b" / "optuna.journal").exists()  # the shared study, not a private one
    other = tune_kd(spec, teacher, splits, replace(TINY, epochs=1), n_trials=1, minutes=5, work_dir=tmp_path / "c",
                    storage=url, study_name="t")
    assert [t["number"] for t in other.trials] == [0]  # another name: another study in the same file


def test_the_study_name_follows_data_student_and_target():
    from edgekd.distill.tune import study_name_for

    a, b = packaged_subset(300, 50), packaged_subset(200, 50)
    assert study_name_for(a, "cnn", "jetson-nano") == study_name_for(packaged_subset(300, 50), "cnn", "jetson-nano")
    names = {study_name_for(a, "cnn", "jetson-nano"), study_name_for(b, "cnn", "jetson-nano"),
             study_name_for(a, "mlp", "jetson-nano"), study_name_for(a, "cnn", "raspberry-pi-5")}
    assert len(names) == 4


@pytest.mark.parametrize("url, words", [
    ("redis://localhost/0", "not an Optuna storage URL"),
    ("study.db", "not an Optuna storage URL"),
    ("journal:///no/such/folder/s.log", "no folder"),
    ("sqlite:////no/such/folder/s.db", "--tune-storage"),
])
def test_a_bad_storage_url_is_one_line_with_a_hint(url, words, tmp_path):
    from edgekd.distill.tune import check_storage, open_storage

    with pytest.raises(EdgeKDError) as err:
        open_storage(url, tmp_path, False)
    assert words in str(err.value) and "\n" not in str(err.value) and err.value.hint
    if "sqlite" not in url:  # refused before anything is opened or written (what the run's checks call)
        with pytest.raises(EdgeKDError, match=words):
            check_storage(url)


def test_the_cli_refuses_a_bad_tune_storage_before_writing_anything(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "EDGEKD_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "edgekd", "distill", "--target", "host", "--tune", "2",
                           "--tune-storage", "journal:///no/such/folder/s.log", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no folder /no/such/folder" in proc.stdout + proc.stderr
    assert not out.exists()
