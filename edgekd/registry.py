"""Name -> object registries filled by decorators in the module that defines each thing."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from edgekd.errors import EdgeKDError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dictionary of named entries (targets, runtimes, losses, formats, models, datasets...).

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("kd")
    ... class HintonKD: ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise EdgeKDError(
                f"unknown {self.kind} {name!r}",
                suggest(name, self._entries, self.kind),
            ) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def suggest(name: str, choices, kind: str) -> str:
    """'did you mean X?' plus the list of valid names, for one-line errors."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    if len(choices) > 30:  # torchvision's or timm's hundreds of names: the nearest few, not a wall of text
        known = f"{len(choices)} in all, nearest: {', '.join(close or choices[:5])}"
    else:
        known = ", ".join(choices) if choices else "none"
    kinds = kind + ("es" if kind.endswith(("s", "x", "ch", "sh")) else "s")  # losses, not "losss"
    if close:
        return f"did you mean {close[0]!r}? known {kinds}: {known}"
    return f"known {kinds}: {known}"


def import_modules(package: str, path, *, prefix: str = "", first: tuple[str, ...] = (), skip=()) -> list[str]:
    """Import the modules of ``package`` (whose ``__path__`` is ``path``) so that each registers itself.

    ``first`` are imported in that order (a registry's order is what users see: ``--formats all``), then
    every other module whose name starts with ``prefix``, sorted: a module dropped into the package is
    registered without editing a list anywhere.
    """
    import importlib
    import pkgutil

    found = sorted(m.name for m in pkgutil.iter_modules(path) if m.name.startswith(prefix) and m.name not in skip)
    order = [m for m in first if m in found] + [m for m in found if m not in first]
    for module in order:
        importlib.import_module(f"{package}.{module}")
    return order
