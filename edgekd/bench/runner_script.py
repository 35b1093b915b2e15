"""`edgekd runner`: write the on-device runner (edgekd.bench.device_runner) out as one standalone file.

The runner is a module of this package; the copy written for a device has its ``edgekd:embed`` block
replaced by the portable source it imports (edgekd.bench.env's probes, edgekd.bench.measure's timing
loop), so the file needs only Python >= 3.6, numpy and a runtime. The copy is checked against Python
3.6 before it is written: a newer construct is a bug in edgekd, found here rather than on the device.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from types import ModuleType

from edgekd.bench.device_runner import RESULTS_FORMAT, RESULTS_VERSION  # noqa: F401  (the results format it writes)
from edgekd.errors import EdgeKDError
from edgekd.fsutil import atomic_path

# Jetson Nano's newest JetPack (4.6) ships Python 3.6: the runner must parse and run there.
OLDEST_PYTHON = (3, 6)
RUNNER_NAME = "edgekd_runner.py"
EMBED_BEGIN = "# edgekd:embed-begin"
EMBED_END = "# edgekd:embed-end"

# What Python 3.6 lacks that ast's feature_version does not catch: stdlib modules and functions, and
# keyword arguments added later (subprocess.run(capture_output=, text=) are 3.7).
NEWER_MODULES = {"dataclasses", "contextvars", "importlib.resources", "importlib.metadata", "zoneinfo", "graphlib",
                 "tomllib"}
NEWER_ATTRIBUTES = {"perf_counter_ns", "time_ns", "monotonic_ns", "process_time_ns", "thread_time_ns", "nullcontext",
                    "fromisoformat", "removeprefix", "removesuffix", "isascii", "get_running_loop", "cache",
                    "cached_property", "shlex_join"}
NEWER_BUILTINS = {"breakpoint", "aiter", "anext"}
NEWER_SUBPROCESS_KEYWORDS = {"capture_output", "text"}


def portable_block(module: ModuleType) -> str:
    """The source between a module's ``# PORTABLE-BEGIN`` and ``# PORTABLE-END`` markers."""
    text = Path(module.__file__).read_text(encoding="utf-8")
    start = text.index("# PORTABLE-BEGIN")
    end = text.index("# PORTABLE-END")
    return text[start:end].split("\n", 1)[1].rstrip() + "\n"


def render_runner_script() -> str:
    """The runner's full standalone source, checked to parse as Python 3.6 and to import nothing of edgekd."""
    from edgekd.bench import device_runner, env, measure
    from edgekd.version import __version__

    text = Path(device_runner.__file__).read_text(encoding="utf-8")
    start, end = text.index(EMBED_BEGIN), text.index(EMBED_END) + len(EMBED_END)
    embedded = "\n".join([
        f'EDGEKD_VERSION = "{__version__}"', "",
        "# ---------------------------------------------------------------- device probes (edgekd.bench.env)",
        portable_block(env),
        "# ---------------------------------------------------------------- timing (edgekd.bench.measure)",
        portable_block(measure),
    ])
    source = text[:start] + embedded + text[end:]
    check_python36(source)
    return source


def python36_problems(source: str) -> list[str]:
    """Constructs in ``source`` that Python 3.6 cannot run (empty when it is fine)."""
    try:
        tree = ast.parse(source, feature_version=OLDEST_PYTHON)
    except SyntaxError as err:
        return [f"line {err.lineno}: {err.msg} (Python 3.6 syntax)"]
    problems = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.ImportFrom):
            if node.module == "__future__" and any(a.name == "annotations" for a in node.names):
                problems.append(f"line {line}: from __future__ import annotations is Python 3.7")
            modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            modules = []
        for name in modules:
            if name in NEWER_MODULES or name.split(".")[0] == "edgekd":
                problems.append(f"line {line}: imports {name}, which a Python 3.6 device without edgekd lacks")
        if isinstance(node, ast.Attribute) and node.attr in NEWER_ATTRIBUTES:
            problems.append(f"line {line}: .{node.attr} is newer than Python 3.6")
        if isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
            problems.append(f"line {line}: {node.id}() is newer than Python 3.6")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess":
            for kw in node.keywords:
                if kw.arg in NEWER_SUBPROCESS_KEYWORDS:
                    problems.append(f"line {line}: subprocess.{node.func.attr}({kw.arg}=...) is Python 3.7")
    return problems


def check_python36(source: str) -> None:
    """Fail loudly (at edgekd build/test time, not on the device) if the runner uses anything newer than 3.6."""
    problems = python36_problems(source)
    if problems:  # a bug in edgekd, not a user error
        raise RuntimeError("on-device runner is not Python 3.6: " + "; ".join(problems[:5]))


def write_runner_script(out: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write the runner to ``out`` (atomically, executable) and return its path.

    ``overwrite=False`` refuses a file that exists (the CLI's default); a folder gets edgekd_runner.py.
    """
    from edgekd.fsutil import refuse_existing_output, writable_folder

    out = Path(out)
    if out.is_dir():
        out = out / RUNNER_NAME
    if out.suffix != ".py":
        raise EdgeKDError(f"runner output {out} must end in .py", f"pass --out such as {RUNNER_NAME}")
    if out.is_dir():
        raise EdgeKDError(f"runner output {out} is a folder", f"pass a file name such as {RUNNER_NAME}")
    refuse_existing_output(out, overwrite=overwrite)
    writable_folder(out.parent if str(out.parent) else ".")
    source = render_runner_script()
    with atomic_path(out) as tmp:
        tmp.write_text(source, encoding="utf-8")
        os.chmod(tmp, 0o755)
    return out
