"""Accuracy gate for quantized artifacts: measure the drop on labelled validation images, try known remedies."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.export.base import CALIBRATION_METHODS, one_line

if TYPE_CHECKING:
    from edgekd.export.job import ExportJob

#: format name -> fn(job) yielding (what is tried, ExportOptions overrides); filled by @remedies_for
REMEDIES: dict[str, Callable[[ExportJob], Iterator[tuple[str, dict]]]] = {}


def remedies_for(*names: str):
    def decorator(fn):
        for name in names:
            REMEDIES[name] = fn
        return fn

    return decorator


def accuracy(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy (fraction) of a batch function over labelled images."""
    if len(x) == 0:
        return float("nan")
    hits = 0
    for i in range(0, len(x), batch):
        hits += int((np.asarray(run(x[i:i + batch])).argmax(1) == y[i:i + batch]).sum())
    return hits / len(x)


def artifact_runner(art, threads: int | None = None):
    """The runner of an artifact's own runtime (parity and accuracy checks on this machine)."""
    from edgekd.runtimes import RUNTIMES

    if art.path is None:
        raise EdgeKDError(f"artifact {art.name} has no file to run", "its export failed or was skipped; see its reason")
    return RUNTIMES.get(art.runtime).runner(art.path, threads=threads, device="cpu")


def quantizable_nodes(onnx_path: Path) -> list[str]:
    """Conv / Gemm / MatMul node names in graph order: what static quantization turns into INT8."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")]


def sensitive_onnx_nodes(job: ExportJob, qdq_path: Path, x: np.ndarray, top: int = 3) -> list[str]:
    """The layers whose outputs lose the most to INT8 (lowest SQNR, measured with ORT's QDQ debugger).

    The first conv (it sees raw pixels) and the classifier (its outputs are the logits) lead the list:
    they are the usual culprits and cost little speed to keep in float.
    """
    fp32 = job.onnx_fp32()
    nodes = quantizable_nodes(fp32)
    if not nodes:
        return []
    chosen = [nodes[0], nodes[-1]] if len(nodes) > 1 else [nodes[0]]
    try:
        ranked = _rank_by_sqnr(job, fp32, qdq_path, x[:32])
    except Exception:  # noqa: BLE001 - the debugger is best-effort; first/last are still worth trying
        ranked = []
    for name in ranked:
        if name in nodes and name not in chosen:
            chosen.append(name)
        if len(chosen) >= 2 + top:
            break
    return chosen


def _rank_by_sqnr(job: ExportJob, fp32: Path, qdq: Path, x: np.ndarray) -> list[str]:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    work = job.scratch_path("sqnr")
    work.mkdir(exist_ok=True)
    aug_fp32, aug_qdq = work / "fp32.onnx", work / "qdq.onnx"
    modify_model_output_intermediate_tensors(str(fp32), str(aug_fp32))
    modify_model_output_intermediate_tensors(str(qdq), str(aug_qdq))
    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{name: x[i:i + 8]} for i in range(0, len(x), 8)])

        def get_next(self):
            return next(self._it, None)

    matched = create_activation_matching(collect_activations(str(aug_qdq), Reader()),
                                         collect_activations(str(aug_fp32), Reader()))
    errors = compute_activation_error(matched)
    producer = {out: n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node for out in n.output}
    scored = sorted((err.get("xmodel_err", err["qdq_err"]), producer[t]) for t, err in errors.items() if t in producer)
    return [node for _, node in scored]


@remedies_for("ort-int8")
def qdq_remedies(job: ExportJob) -> Iterator[tuple[str, dict]]:
    opts = job.options
    yield ("per-tensor weights" if opts.per_channel else "per-channel weights"), {"per_channel": not opts.per_channel}
    for method in CALIBRATION_METHODS:
        if method != opts.calibration:
            yield f"{method} calibration", {"calibration": method}
    yield "keep sensitive layers in float", {"exclude": "sensitive"}


@remedies_for("executorch-int8")
def pt2e_remedies(job: ExportJob) -> Iterator[tuple[str, dict]]:
    opts = job.options
    yield ("per-tensor weights" if opts.per_channel else "per-channel weights"), {"per_channel": not opts.per_channel}


@remedies_for("openvino-int8")
def nncf_remedies(job: ExportJob) -> Iterator[tuple[str, dict]]:
    yield "mixed preset (asymmetric activations)", {"ov_preset": "mixed"}
    yield "nncf.quantize_with_accuracy_control", {"ov_accuracy_control": True}


def gate(job: ExportJob, art, export: Callable[[ExportJob], object], *, validation: tuple[np.ndarray, np.ndarray],
         reference_accuracy: float, max_drop: float) -> tuple[object, list[dict]]:
    """Measure ``art`` on ``validation``; when it drops more than ``max_drop``, try the format's remedies.

    ``export(job)`` re-exports with the job's (changed) options and returns a new artifact in a
    scratch folder. Returns the best artifact measured (the original when nothing beats it) and the
    list of what was tried with each one's validation accuracy.
    """
    x, y = validation

    def measure(a) -> float:
        return accuracy(artifact_runner(a).run, x, y)

    acc = measure(art)
    tried = [{"remedy": "as exported", "val_accuracy": acc, "val_drop": reference_accuracy - acc}]
    best, best_acc = art, acc
    if reference_accuracy - acc <= max_drop or art.name not in REMEDIES:
        return best, tried
    base = job.options
    for label, overrides in REMEDIES[art.name](job):
        if overrides.get("exclude") == "sensitive":
            overrides = {"exclude": tuple(sensitive_onnx_nodes(job, job.onnx_qdq(), x))}
            label = f"keep {', '.join(overrides['exclude'])} in float"
        # A remedy changes only how the format is quantized; the options were checked when they were made.
        job.options = copy.copy(base)
        for name, value in overrides.items():
            setattr(job.options, name, value)
        try:
            candidate = export(job)
            if candidate.status != "ok":
                tried.append({"remedy": label, "error": candidate.reason})
                continue
            cand_acc = measure(candidate)
        except Exception as err:  # noqa: BLE001 - a remedy that fails is reported, not fatal
            tried.append({"remedy": label, "error": one_line(err)})
            continue
        finally:
            job.options = base
        tried.append({"remedy": label, "val_accuracy": cand_acc, "val_drop": reference_accuracy - cand_acc})
        if cand_acc > best_acc:
            best, best_acc = candidate, cand_acc
        if reference_accuracy - best_acc <= max_drop:
            break
    return best, tried
