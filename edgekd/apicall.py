"""Packages that share their name with a Python API function (``edgekd.distill``, ``edgekd.gate``, ...).

Importing ``edgekd.gate`` binds the attribute ``edgekd.gate`` to the package, hiding the API function of
that name; :func:`callable_package` makes the package itself callable as that function, so
``edgekd.gate(run, max_size_mb=1)`` works whatever was imported before.
"""

from __future__ import annotations

import importlib
import sys
import types


def callable_package(module_name: str, function: str) -> None:
    """Calling the package ``module_name`` calls ``edgekd.api.<function>``."""

    class _CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module("edgekd.api"), function)(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallablePackage
