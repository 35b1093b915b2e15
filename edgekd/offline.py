"""Third-party libraries imported and called so that they neither go online, nor fork edgekd's process, nor
leave it unable to take a signal."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys


def _no_send(self, message) -> None:
    return None


def quiet_openvino_telemetry() -> None:
    """Turn OpenVINO's and NNCF's usage telemetry into no-ops for this process.

    OpenVINO (when imported and per ``convert_model``) and NNCF (per quantization) post usage events through
    ``openvino_telemetry``, which sends each one from a background thread in a forked copy of the whole
    process (multiprocessing's default fork start method), to reach Google Analytics. Forking a process
    whose torch, JAX or runtime threads hold locks can hang or crash the copy; edgekd runs offline and never
    forks beside JAX, so the sender does nothing here. The user's own opt-in file is left untouched.
    """
    try:
        from openvino_telemetry.backend import backend_ga4
    except ImportError:  # not installed: OpenVINO and NNCF fall back to their own no-op stubs
        return
    if backend_ga4.GA4Backend.send is not _no_send:
        backend_ga4.GA4Backend.send = _no_send


def import_openvino():
    """The ``openvino`` module, its telemetry quiet (see ``quiet_openvino_telemetry``)."""
    quiet_openvino_telemetry()
    import openvino

    return openvino


def import_nncf():
    """The ``nncf`` module, its telemetry quiet (see ``quiet_openvino_telemetry``)."""
    quiet_openvino_telemetry()
    import nncf

    return nncf


@functools.lru_cache(maxsize=1)
def openvino_core():
    """edgekd's one ``openvino.Core`` for the process, its plugins loaded once (see ``signal_stack_kept``)."""
    with signal_stack_kept():
        core = import_openvino().Core()
        core.available_devices  # loads the CPU plugin now, inside the guard
    return core


class _Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_SS_DISABLE = 2
_KEPT: list = []   # alternate stacks edgekd installed: never freed, a signal may land on one at any time


@functools.lru_cache(maxsize=1)
def _sigaltstack():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):
        return None


def _stack_now(sigaltstack) -> _Stack:
    stack = _Stack()
    sigaltstack(None, ctypes.byref(stack))
    return stack


@contextlib.contextmanager
def signal_stack_kept():
    """Give the calling thread back the alternate signal stack it had before the block.

    OpenVINO's CPU plugin (2026.x, on CPUs with AMX) installs a stack of its own on the thread that first
    uses it (``sigaltstack``), keeps the one it replaced and puts that back, unmapping its own, when the
    plugin is destroyed. Two Cores destroyed in the order they were made leave the thread pointing at the
    first one's unmapped stack, and the next signal with a handler (a DataLoader worker's SIGCHLD, Ctrl-C)
    kills the process with SIGSEGV. After the block the thread has its old stack again (or, where the
    library needed a larger one, one of that size that edgekd never frees), so every plugin's saved stack
    is one that stays valid, whatever order the plugins go in.
    """
    sigaltstack = _sigaltstack()
    if sigaltstack is None:
        yield
        return
    before = _stack_now(sigaltstack)
    try:
        yield
    finally:
        after = _stack_now(sigaltstack)
        if (after.ss_sp, after.ss_size, after.ss_flags) != (before.ss_sp, before.ss_size, before.ss_flags):
            _restore(sigaltstack, before, after)


def _restore(sigaltstack, before: _Stack, after: _Stack) -> None:
    if before.ss_flags & _SS_DISABLE or not before.ss_sp:
        stack = _Stack(None, _SS_DISABLE, 0)
    elif after.ss_flags & _SS_DISABLE or before.ss_size >= after.ss_size:
        stack = _Stack(before.ss_sp, 0, before.ss_size)
    else:  # the library needed more room than the old stack has (AMX state makes signal frames larger)
        buffer = ctypes.create_string_buffer(after.ss_size)
        _KEPT.append(buffer)
        stack = _Stack(ctypes.addressof(buffer), 0, after.ss_size)
    sigaltstack(ctypes.byref(stack), None)
