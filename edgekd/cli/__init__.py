"""The ``edgekd`` command line: a thin layer that parses options, calls one library function, prints."""

from __future__ import annotations

import ast
import errno
import importlib
import os
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import click

from edgekd.version import __version__
from edgekd.errors import EdgeKDError, first_line

# Exit codes: 0 success, 1 a check failed (gate), 2 bad usage or input, 3 a bug in edgekd, 130 Ctrl-C.
INTERNAL_ERROR = 3

# A command is a module of this package that defines a click command called ``command`` (at top level); the
# module's name is the command's (``foo_bar.py`` -> ``edgekd foo-bar``). Adding a command is adding its file.
# A command's module is imported only when it runs or --help lists it: `edgekd targets` does not import torch.
FIRST = ("distill",)  # the whole job leads --help; the other commands follow alphabetically


def command_modules(path=None) -> list[str]:
    """The modules of ``path`` (this package's by default) that define ``command``, found by reading their
    source, not importing it; ``FIRST`` first, then alphabetically."""
    import pkgutil

    found = sorted(m.name for m in pkgutil.iter_modules(__path__ if path is None else path)
                   if not m.ispkg and not m.name.startswith("_")
                   and _defines_command(m.module_finder.path, m.name))  # type: ignore[union-attr]
    return [m for m in FIRST if m in found] + [m for m in found if m not in FIRST]


def _defines_command(folder: str, module: str) -> bool:
    try:
        tree = ast.parse((Path(folder) / f"{module}.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "command":
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "command" for t in targets):
            return True
    return False


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [module.replace("_", "-") for module in command_modules()]

    def get_command(self, ctx, name):
        module = name.replace("-", "_")
        if not module.isidentifier() or module.startswith("_") or not _defines_command(os.path.dirname(__file__), module):
            return None
        return importlib.import_module(f"edgekd.cli.{module}").command


def option_defaults(options_class) -> SimpleNamespace:
    """The field defaults of an options dataclass, so click options read them instead of repeating them."""
    from dataclasses import MISSING, fields

    return SimpleNamespace(**{f.name: f.default if f.default is not MISSING else f.default_factory()
                              for f in fields(options_class)
                              if f.default is not MISSING or f.default_factory is not MISSING})


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgekd")
def cli():
    """Distil a teacher into a student that meets a latency budget on an edge device.

    Start with `edgekd distill --target jetson-nano`; `edgekd targets` lists the devices.
    Add --debug anywhere to see full tracebacks.
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, turning errors into one line and an exit code.

    The exit code depends only on what went wrong, never on --debug, which adds the traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("EDGEKD_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        code = cli.main(args=argv, prog_name="edgekd", standalone_mode=False)
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - every error becomes one line and its exit code
        code, line = error_line(err)
        if debug and not isinstance(err, (click.ClickException, click.exceptions.Abort, KeyboardInterrupt)):
            traceback.print_exc()
        click.echo(line, err=True)
        sys.exit(code)
    sys.exit(code if isinstance(code, int) else 0)


# Errors from the machine or the user's paths (permissions, a full disk, a file where a folder should be):
# bad input or environment (exit 2), not a bug in edgekd.
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                      errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP, errno.EFBIG,
                      errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENXIO, errno.ENODEV}


def error_line(err: BaseException) -> tuple[int, str]:
    """The exit code and the one line printed for an error: 1 budget exceeded, 2 bad input or environment,
    3 a bug in edgekd, 130 interrupted."""
    if isinstance(err, EdgeKDError):
        return err.exit_code, f"edgekd: error: {err}"
    if isinstance(err, (click.exceptions.Abort, KeyboardInterrupt)):
        return 130, "edgekd: interrupted"
    if isinstance(err, click.ClickException):
        # Usage errors: one line like every other error (click's own adds a usage block), exit 2.
        ctx = getattr(err, "ctx", None)
        see = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        return err.exit_code, f"edgekd: error: {' '.join(err.format_message().split()).rstrip('.')}{see}"
    torch = sys.modules.get("torch")  # only loaded by commands that use it
    if torch is not None and isinstance(err, torch.OutOfMemoryError):
        return 2, ("edgekd: error: the GPU ran out of memory; rerun with a smaller --batch-size "
                   "(e.g. half the current one), adding --resume to keep the finished epochs")
    if isinstance(err, MemoryError):
        return 2, ("edgekd: error: this machine ran out of memory; use a smaller input shape, batch size or model, "
                   "or a machine with more memory")
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        where = f" {err.filename}" if err.filename else ""
        return 2, (f"edgekd: error: cannot use{where}: {err.strerror or first_line(err)}; "
                   "check the path, its permissions and the free space")
    return INTERNAL_ERROR, (f"edgekd: internal error: {first_line(err, 300, with_type=True)}; "
                            "rerun with --debug for the traceback")
