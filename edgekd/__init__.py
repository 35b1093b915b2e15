"""edgekd: distil a teacher into a student that meets a latency budget on an edge device.

The Python API (``edgekd.distill``, ``search``, ``predict``, ``export``, ``bench``, ``gate``, ``report``,
``RunConfig``, ``Run``) is imported on first use, so ``import edgekd`` stays light.
"""

from edgekd.version import __version__  # noqa: F401  (its one home: library modules read it there, not from this facade)

_API = ("distill", "search", "predict", "export", "bench", "gate", "report", "Run", "GateResult")
__all__ = ["__version__", "RunConfig", "events", *_API]


def __getattr__(name: str):
    if name in _API:
        from edgekd import api

        return getattr(api, name)
    if name == "RunConfig":
        from edgekd.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'edgekd' has no attribute {name!r}")
