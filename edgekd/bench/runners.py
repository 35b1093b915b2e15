"""Run model files on this machine: the runner of each file's runtime (see edgekd.runtimes), float32 NCHW in, logits out."""

from __future__ import annotations


from edgekd.errors import EdgeKDError
from edgekd.runtimes import RUNTIMES, Runner, runtime_for_file  # noqa: F401  (the runner API in one import)
from edgekd.runtimes.pytorch import PyTorchRunner  # noqa: F401  (wraps in-memory modules as baselines)


def load_runner(path_or_artifact, threads: int | None = None, *, device: str = "cpu",
                runtime: str | None = None) -> Runner:
    """A runner for a model file (runtime chosen by suffix) or an export Artifact (by its runtime), with
    ``threads`` or, when None, this job's share of the cores (edgekd.threads)."""
    from edgekd.threads import current

    threads = threads or current()
    path = getattr(path_or_artifact, "path", path_or_artifact)
    if runtime is None:
        runtime = getattr(path_or_artifact, "runtime", None) or runtime_for_file(path)
    if path is None:
        raise EdgeKDError(f"artifact {getattr(path_or_artifact, 'name', '?')} has no file to run",
                          "its export failed or was skipped; see its reason")
    return RUNTIMES.get(runtime).runner(path, threads=threads, device=device)


def available_runtimes() -> dict[str, tuple[bool, str]]:
    return {name: rt.available() for name, rt in RUNTIMES.items()}
