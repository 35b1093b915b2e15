"""edgekd: distil a teacher into a student that meets a latency budget on an edge device.

The Python API (``edgekd.distill``, ``search``, ``predict``, ``export``, ``bench``, ``gate``, ``report``,
``RunConfig``, ``Run``) is imported on first use, so ``import edgekd`` stays light.
"""

import sys
import types

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


# Five API functions share their names with subpackages (edgekd.gate, edgekd.export, ...). Importing
# one binds ``edgekd.<name>`` to the package, after which __getattr__ is no longer asked: so the package
# bound under an API name is made callable as that function, and ``edgekd.gate(run, ...)`` works whatever
# was imported before, while ``edgekd.gate.resolve_budgets`` stays the package's.
class _APIPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from edgekd import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)

    def __setattr__(self, name: str, value) -> None:
        # The import system binds a submodule as an attribute of its package; a package that loads its names
        # lazily lists in _NOT_SUBMODULES those that are its own (edgekd.distill.train: the function, not
        # train.py), so importing the submodule does not hide them.
        if isinstance(value, types.ModuleType) and name in getattr(self, "_NOT_SUBMODULES", ()):
            return
        super().__setattr__(name, value)


class _Edgekd(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _API and type(value) is types.ModuleType:  # the import system binding a subpackage
            value.__class__ = _APIPackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Edgekd
