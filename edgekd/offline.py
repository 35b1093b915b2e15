"""Third-party libraries that would post usage events, imported so that they neither go online nor fork edgekd's process."""

from __future__ import annotations


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
