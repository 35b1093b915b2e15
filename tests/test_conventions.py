"""Habits the code base keeps: defaults written once, one error-line helper, declared imports, file modes, locks."""

from __future__ import annotations

import ast
import os
import stat
import sys
from pathlib import Path

import pytest

from edgekd.errors import EdgeKDError, first_line

REPO = Path(__file__).resolve().parents[1]


def test_distill_cli_defaults_are_the_run_config():
    from edgekd.cli.distill import _walk, command
    from edgekd.config import field_default

    params = command.make_context("distill", []).params
    for param, path, owner, f in _walk():
        default = field_default(owner, f.name)
        if f.metadata.get("negate"):
            assert params[param] is False, path
        elif f.metadata.get("scale"):
            assert params[param] == pytest.approx(default * f.metadata["scale"]), path  # --max-drop in points
        elif f.metadata.get("multiple"):
            assert params[param] == (), path
        elif isinstance(default, tuple):
            assert params[param] == ",".join(map(str, default)), path
        else:
            assert params[param] == default, path


@pytest.mark.parametrize("err, expected", [
    (ValueError(""), "ValueError"),
    (ValueError("\n\n  \n"), "ValueError"),
    (RuntimeError("Exception from src/core.cpp:12:\nCheck 'x' failed\nthe real cause\nmore"), "the real cause"),
    (OSError("first\nsecond"), "first"),
    ("plain text\nnext", "plain text"),
    (KeyError(), "KeyError"),
])
def test_first_line_never_fails(err, expected):
    assert first_line(err) == expected
    assert first_line(err, with_type=True).endswith(expected)


def test_first_line_cuts_and_keeps_edgekd_messages_whole():
    assert first_line(ValueError("x" * 500), 50) == "x" * 47 + "..."
    assert first_line(EdgeKDError("what", "how"), with_type=True) == "what; how"
    assert first_line(ValueError("bad"), with_type=True) == "ValueError: bad"


def _declared() -> set[str]:
    import re

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    return {re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def test_every_imported_package_is_declared():
    """A package edgekd imports is in pyproject.toml (core or an extra), so a clean install has it."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for path in (REPO / "edgekd").rglob("*.py"):
        if path.name == "device_runner.py":
            continue  # runs on the device: its runtime imports are the device's, not edgekd's
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "edgekd":
                    continue
                providers = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                if not providers & declared:
                    missing.setdefault(top, str(path.relative_to(REPO)))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_weights_and_reports_have_the_same_file_mode(tmp_path):
    import torch

    from edgekd.fsutil import atomic_write_json
    from edgekd.models import ModelSpec, save_model

    spec = ModelSpec("cnn", 10, 1, width=0.25)
    torch.manual_seed(0)
    weights = save_model(tmp_path / "student.safetensors", spec.build(), spec)
    report = atomic_write_json(tmp_path / "report.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (weights, report)}
    assert modes == {0o666 & ~umask}


def test_the_run_lock_is_removed_when_the_run_ends(tmp_path):
    from edgekd.fsutil import LOCK_NAME, run_lock

    with run_lock(tmp_path / "run") as lock:
        assert lock.name == LOCK_NAME and lock.is_file()
        with pytest.raises(EdgeKDError, match="being written by another edgekd run"):
            with run_lock(tmp_path / "run"):
                pass
        assert lock.is_file()  # a refused second run does not remove the holder's lock
    assert list((tmp_path / "run").iterdir()) == []
    with run_lock(tmp_path / "run"):  # and the folder can be locked again
        pass


def test_a_module_dropped_into_a_registry_package_registers_itself(tmp_path, monkeypatch):
    """How runtimes (edgekd/runtimes/*.py) and exporters (edgekd/export/to_*.py) are found: no list to edit."""
    from edgekd.registry import import_modules

    pkg = tmp_path / "plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("SEEN = []\n")
    for name in ("to_b", "to_a", "to_z", "helper"):
        (pkg / f"{name}.py").write_text(f"from plugins import SEEN\nSEEN.append({name!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import plugins

    order = import_modules("plugins", plugins.__path__, prefix="to_", first=("to_z",))
    assert order == ["to_z", "to_a", "to_b"] and plugins.SEEN == ["to_z", "to_a", "to_b"]
    monkeypatch.delitem(sys.modules, "plugins")


# -- The shape of the library: it never prints, has no import cycle, and its rooms stay small. ------------
# Each allow-list below names files that are still being converted, with the helper converting them; the
# tests fail on a new offender and on an entry that no longer offends, so the lists only shrink.

LIBRARY = REPO / "edgekd"
# Front ends print: the command line, and the on-device runner and probe, programs run on a device whose
# stdout is the JSON they hand back.
FRONT_ENDS = ("edgekd/cli/", "edgekd/bench/device_runner.py", "edgekd/devices/probe.py")
# calls of these names, bare or as an attribute; rich's live displays and consoles in a module that imports rich
PRINTING_CALLS, RICH_OUTPUT = {"print"}, {"Console", "Progress", "Live", "Status"}
PRINTING_ALLOWED: dict = {}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 700, 80
SIZE_ALLOWED: dict = {}
CYCLES_ALLOWED: dict = {}


def _library_modules() -> dict[str, tuple[str, ast.Module]]:
    """Dotted module name -> (path relative to the repository, syntax tree) for every module of edgekd/."""
    out = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = (path.relative_to(REPO).as_posix(), ast.parse(path.read_text(encoding="utf-8")))
    return out


def _printing_calls(tree: ast.Module) -> list[str]:
    uses_rich = any(isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "rich"
                    or isinstance(n, ast.Import) and any(a.name.split(".")[0] == "rich" for a in n.names)
                    for n in ast.walk(tree))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        stream_write = (isinstance(func, ast.Attribute) and func.attr == "write"
                        and ast.unparse(func.value) in ("sys.stdout", "sys.stderr"))
        if name in PRINTING_CALLS or stream_write or (uses_rich and name in RICH_OUTPUT):
            found.append(f"line {node.lineno}: {ast.unparse(func)}(")
    return found


def test_the_library_never_prints():
    """Only front ends print; the library says what it does through edgekd.events."""
    offenders = {}
    for path, tree in _library_modules().values():
        if not path.startswith(FRONT_ENDS) and (calls := _printing_calls(tree)):
            offenders[path] = calls
    new = {p: calls for p, calls in offenders.items() if p not in PRINTING_ALLOWED}
    assert not new, f"print sites outside edgekd/cli (emit edgekd.events instead): {new}"
    stale = sorted(set(PRINTING_ALLOWED) - set(offenders))
    assert not stale, f"no longer print; remove them from PRINTING_ALLOWED: {stale}"


def test_the_print_check_sees_every_way_of_printing():
    tree = ast.parse("import rich.progress\nprint(1)\nconsole.print(x)\nsys.stdout.write('a')\nsys.stderr.write('b')\n"
                     "c = Console()\nrich.progress.Progress()\nwith Live(t): pass\nlog.info('fine')\n")
    assert len(_printing_calls(tree)) == 7
    assert _printing_calls(ast.parse("with events.Progress('t', 'd', 3): pass")) == []  # edgekd's own, not rich's


def _imported(module: str, node: ast.AST, is_package: bool, modules) -> set[str]:
    """The edgekd modules an import statement names: ``from pkg import name`` is pkg.name where that is a
    module, else pkg; an unknown dotted name counts as its longest known prefix."""
    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    if isinstance(node, ast.Import):
        return {known(a.name) for a in node.names if a.name.split(".")[0] == "edgekd"} - {None}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "edgekd":
        return set()
    return {f"{source}.{a.name}" if f"{source}.{a.name}" in modules else known(source) for a in node.names} - {None}


def _registered(module: str, call: ast.Call, modules) -> set[str]:
    """The modules ``import_modules(__name__, __path__, prefix=..., skip=...)`` imports at run time."""
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("prefix", "skip")}
    return {m for m in modules if m.rpartition(".")[0] == module and m.rpartition(".")[2].startswith(kw.get("prefix", ""))
            and m.rpartition(".")[2] not in kw.get("skip", ())}


def import_graph() -> dict[str, set[str]]:
    """Module -> the edgekd modules it imports, function-level imports and registry scans (import_modules)
    included; imports under ``if TYPE_CHECKING:`` never run and are left out. A submodule's implicit import
    of its parent package is left out too: every package would otherwise be a cycle with its modules."""
    modules = _library_modules()
    graph = {}
    for module, (path, tree) in modules.items():
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for stmt in block.body for n in ast.walk(stmt)}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _imported(module, node, path.endswith("__init__.py"), modules)
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_modules"):
                deps |= _registered(module, node, modules)
        graph[module] = deps - {module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_the_cycle_finder_finds_cycles_through_function_level_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"} - {"e"}, "f": {"g"}, "g": {"f"}}
    assert sorted(map(sorted, import_cycles(graph))) == [["a", "b", "c"], ["f", "g"]]
    modules = {"edgekd.p": None, "edgekd.p.q": None, "edgekd.p.to_x": None, "edgekd.p.base": None}
    tree = ast.parse("def f():\n    from edgekd.p import q\n    from . import base\n")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found |= _imported("edgekd.p.to_x", node, False, modules)
    assert found == {"edgekd.p.q", "edgekd.p.base"}
    call = ast.parse("import_modules(__name__, __path__, prefix='to_', skip=('base',))").body[0].value
    assert _registered("edgekd.p", call, modules) == {"edgekd.p.to_x"}


def test_no_import_cycle_in_the_library():
    cycles = set(import_cycles(import_graph()))
    new = [sorted(c) for c in cycles if c not in CYCLES_ALLOWED]
    assert not new, f"import cycles (function-level imports count): {new}"
    stale = [sorted(c) for c in CYCLES_ALLOWED if c not in cycles]
    assert not stale, f"no longer cycles; remove them from CYCLES_ALLOWED: {stale}"


def test_modules_and_functions_stay_small():
    """No module over 700 lines, no function over 80: a reader can hold each in their head."""
    offenders = {}
    for path, tree in _library_modules().values():
        lines = (REPO / path).read_text(encoding="utf-8").count("\n")
        if lines > MAX_MODULE_LINES:
            offenders[path] = lines
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    offenders[f"{path}:{node.name}"] = length
    new = {k: v for k, v in offenders.items() if k not in SIZE_ALLOWED}
    assert not new, f"over {MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a function: {new}"
    stale = sorted(set(SIZE_ALLOWED) - set(offenders))
    assert not stale, f"small enough now; remove them from SIZE_ALLOWED: {stale}"


def test_a_command_is_a_file_that_defines_command(tmp_path):
    """`edgekd --help` lists every module of edgekd/cli that defines ``command``, found without importing it."""
    from edgekd.cli import cli, command_modules

    (tmp_path / "hello_world.py").write_text("import click\n\n@click.command()\ndef command():\n    pass\n")
    (tmp_path / "alias.py").write_text("from elsewhere import thing as _t\ncommand = _t\n")
    (tmp_path / "helper.py").write_text("def commands():\n    pass\n")
    (tmp_path / "_private.py").write_text("def command():\n    pass\n")
    (tmp_path / "broken.py").write_text("def command(:\n")
    assert command_modules([str(tmp_path)]) == ["alias", "hello_world"]

    listed = cli.list_commands(None)
    assert listed[0] == "distill" and "render" not in listed
    assert set(listed) >= {"targets", "export", "bench", "gate", "report", "search", "devices", "ingest"}
    assert all(cli.get_command(None, name) is not None for name in listed)
    assert cli.get_command(None, "render") is None and cli.get_command(None, "../render") is None


def test_listing_targets_does_not_import_torch():
    import subprocess

    code = ("import sys\nfrom edgekd.cli import cli\ncli.main(['targets'], standalone_mode=False)\n"
            "cli.list_commands(None)\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
