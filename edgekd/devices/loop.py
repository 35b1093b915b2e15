"""Closed loop of `edgekd distill --device NAME`: distil, measure on the device, recalibrate, re-select, repeat.

Round k distils into ``RUN/rounds/k`` (a complete run folder), then times its loadable artifacts on the
device. The recommended artifact's measured latency decides:

- over the budget: the target is recalibrated from every measurement of the device so far (probe
  networks from `edgekd calibrate --device`, `edgekd bench --device` runs, earlier rounds), the width
  is re-selected (a width already measured is judged by its measurement, others by the recalibrated
  prediction) and round k+1 distils the widest that fits;
- far under it (below UNDER_BUDGET of the budget): the same, but a round is spent only when a wider
  student is predicted to fit: otherwise accuracy is not on the table and the loop stops;
- otherwise it fits and the loop stops. At most ``--max-rounds`` rounds.

``RUN/report.json`` is always the last round that was measured (paths point into ``rounds/k``) plus
``device_loop``: every round's predicted vs measured latency, the calibration used and the decision.
A round that fails (device unreachable, connection dropped) never replaces it.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from edgekd import events
from edgekd.errors import EdgeKDError

# "Far under" the budget: a student measured below this fraction of it leaves accuracy on the table
# when a wider one would fit. 0.7 is about one step of the default width grid (0.75 -> 1.0 -> 1.5
# costs 1.3-1.8x per step on the MNIST family), so a wider student has a real chance to fit.
UNDER_BUDGET = 0.7
STATE_NAME = "device-loop.json"


def distill_on_device(opts, run_round) -> dict:
    """Run the closed loop for ``opts.device.remote`` (a RunConfig); ``run_round(config)`` runs the stages of
    one plain distillation (edgekd.pipeline.run_stages) and returns its report."""
    from edgekd.devices.calibrate import device_target
    from edgekd.devices.remote import check, readiness
    from edgekd.devices.store import get_device
    from edgekd.fsutil import atomic_write_json, run_lock
    from edgekd.rundir import default_out_dir, prepare_out_dir

    device = get_device(opts.device.remote)
    target = device_target(device, opts.target)
    out = Path(opts.out) if opts.out else default_out_dir(target.name)
    opts.out = str(out)
    replace_folder = prepare_out_dir(out, overwrite=opts.overwrite, resume=opts.resume)
    # A device that cannot measure fails the run now, not after the teacher and the first student trained.
    info, _ = check(device)
    _, problem = readiness(device, info, target.runtime)
    if problem:
        raise problem
    if replace_folder and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        state = (_load_state(out) if opts.resume else
                 {"rounds": [], "next_width": opts.selection.width, "done": False})
        atomic_write_json(out / "config.json", {**opts.to_dict(), "resume": False, "device_loop": True})
        while not state["done"] and len(state["rounds"]) < opts.device.max_rounds:
            k = len(state["rounds"]) + 1
            events.info(f"── round {k} of at most {opts.device.max_rounds} on {device.name} ──")
            record = _round(opts, run_round, device, target, k, state, out)
            state["rounds"].append(record)
            state["next_width"] = record.get("next_width")
            state["done"] = record["decision"] != "next round" or record.get("error") is not None
            atomic_write_json(out / STATE_NAME, state)
            report = _write_top_level(out, state, device, target, opts)
            if record.get("error"):
                raise _round_failed(record, state, opts)
        report = _write_top_level(out, state, device, target, opts)
    _print_rounds(state, device)
    return report


def _round(opts, run_round, device, target, k: int, state: dict, out: Path) -> dict:
    """Distil round k (width None: the pipeline selects), measure it on the device, decide what comes next."""
    from edgekd.devices.bench import bench_on_device
    from edgekd.devices.remote import MeasureOptions
    from edgekd.hardware.targets import load_target
    from edgekd.report import load_report

    round_dir = out / "rounds" / str(k)
    resume = opts.resume and (round_dir / "config.json").is_file()
    round_opts = round_config(opts, state, round_dir, resume)
    calibration = load_target(device.target).calibration
    try:
        if resume and (round_dir / "report.json").is_file():
            report = load_report(round_dir)  # distilled before; only its measurement failed
            calibration = (report.get("target") or {}).get("calibration", calibration)
        else:
            report = run_round(round_opts)
    except EdgeKDError as err:
        if err.exit_code == 130:
            raise EdgeKDError(f"interrupted in round {k}", _resume_hint(opts), exit_code=130) from None
        raise
    student = report.get("student") or {}
    record = {"round": k, "out": f"rounds/{k}", "width": report["selection"]["width"], "arch": student.get("arch"),
              "image_size": student.get("image_size"), "budget_ms": report["budget_ms"], "calibration": calibration,
              "error": None}
    seconds = max(opts.bench.seconds, 0.2)
    try:
        bench = bench_on_device(round_dir, device, options=MeasureOptions(seconds=seconds, threads=target.threads),
                                history_source=f"distill {out} round {k}")
    except EdgeKDError as err:
        record.update(decision="stopped", error=str(err))
        return record
    record["device_overhead_s"] = bench.run.overhead_s()
    record["device_transfer"] = bench.run.transfer_record()
    report = load_report(round_dir)
    record.update(_judge(report, device, target, opts))
    record.update(_decide(record, report, opts, device, target, state["rounds"]))
    return record


def round_config(opts, state: dict, round_dir: Path, resume: bool):
    """Round k's RunConfig: the loop's, in ``round_dir``, measured by nobody; after a re-selection, the width
    it chose in the family and at the image size the earlier round distilled (``--student auto`` and
    ``--image-sizes`` searched those once, in round 1: re-selection moves the width only)."""
    cfg = copy.deepcopy(opts)
    cfg.out, cfg.device.remote, cfg.resume = str(round_dir), None, resume
    cfg.overwrite = not resume and round_dir.exists()
    cfg.selection.width = state["next_width"]
    if cfg.selection.width is None:
        return cfg
    cfg.selection.widths = None
    last = next((r for r in reversed(state["rounds"]) if r.get("arch")), None)
    if last is not None:
        cfg.student.family = last["arch"]
        if cfg.selection.image_sizes and last.get("image_size"):
            cfg.selection.image_sizes = (int(last["image_size"]),)
    return cfg


def _judge(report: dict, device, target, opts) -> dict:
    """The recommended artifact among those measured on the device: its predicted and measured latency."""
    from edgekd.bench.evaluate import recommend

    source = f"measured:{device.name}"
    measured = [r for r in report["artifacts"] if r.get("target_latency_source") == source]
    pick = recommend(measured, target, opts.export.max_drop) if measured else None
    if pick is None:
        raise EdgeKDError(f"no artifact of round {report.get('config', {}).get('out')} was measured on {device.name}",
                          "see the device results in the round's report")
    row = next(r for r in measured if r["name"] == pick["name"])
    budget = report["budget_ms"]
    ms = row["target_latency_ms"]["p50"]
    status = "over" if ms > budget else ("under" if ms < UNDER_BUDGET * budget else "fits")
    return {"artifact": row["name"], "precision": row.get("precision"), "measured_ms": ms,
            "measured_source": source, "predicted_ms": (row.get("predicted_target_latency_ms") or {}).get("p50"),
            "predicted_source": row.get("predicted_target_latency_source"), "status": status,
            "accuracy": row.get("accuracy"), "recommended": pick}


def _decide(record: dict, report: dict, opts, device, target, previous: list[dict]) -> dict:
    """Recalibrate and re-select when over or far under the budget; the next width or why the loop stops."""
    from edgekd.devices.calibrate import fit_from_history, fit_precision

    if record["status"] == "fits":
        return {"decision": "stop", "why": f"measured {record['measured_ms']:.4g} ms is within the budget"}
    if opts.selection.width is not None:
        return {"decision": "stop", "why": "--width fixed the student: nothing to re-select"}
    try:  # at the precision width selection predicts at: the one that decides the next width
        fit = fit_from_history(target, device, fit_precision(target, None), target.threads)
    except EdgeKDError as err:
        return {"decision": "stop", "why": f"cannot recalibrate: {err}"}
    recal = {"n_measurements": fit.n_measurements, "fit": {k: fit.fit.get(k) for k in ("method", "median_abs_pct_err")},
             "path": str(fit.path) if fit.path else None}
    events.info(f"  recalibrated {target.name} from {fit.n_measurements} measurements on {device.name} "
                  f"(median fit error {fit.fit.get('median_abs_pct_err', float('nan')):.1f}%)")
    measured = {r["width"]: r["measured_ms"] for r in [*previous, record] if r.get("measured_ms") is not None}
    widths, chosen = _reselect(report, opts, device, measured)
    out = {"recalibrated": recal, "candidates": widths}
    current = record["width"]
    if chosen is None:
        return {**out, "decision": "stop", "why": "no width fits the budget as measured or predicted after recalibration"}
    if record["status"] == "under" and chosen["width"] <= current:
        return {**out, "decision": "stop", "status": "fits",
                "why": f"far under the budget, but no wider student is predicted to fit (width {current:g} stays)"}
    if record["round"] >= opts.device.max_rounds:
        return {**out, "decision": "stop", "next_width": chosen["width"],
                "why": f"--max-rounds {opts.device.max_rounds} reached; width {chosen['width']:g} would be next"}
    return {**out, "decision": "next round", "next_width": chosen["width"],
            "why": f"{record['status']} the budget: re-selected width {chosen['width']:g} "
                   f"({chosen['latency_ms']:.4g} ms, {chosen['source']})"}


def _reselect(report: dict, opts, device, measured: dict[float, float]) -> tuple[list[dict], dict | None]:
    """Every candidate width with its latency: measured on the device if a round timed it, else predicted."""
    from edgekd.hardware.select import evaluate_candidate
    from edgekd.hardware.targets import load_target
    from edgekd.models import search_widths

    fresh = load_target(device.target)  # with the calibration just saved
    data, student = report.get("data") or {}, report.get("student") or {}
    # The run's own family, depth and input size: re-selection moves the width only.
    arch = student.get("arch") or opts.student.family
    depth = student.get("depth") or 1
    shape = tuple(data["input_shape"])
    size = student.get("image_size") or shape[-1]
    rows = []
    for width in sorted({float(w) for w in (opts.selection.widths or search_widths(arch))}):
        if width in measured:
            ms, source = measured[width], f"measured:{device.name}"
        else:
            cand = evaluate_candidate(arch, target=fresh, num_classes=data["num_classes"], input_shape=shape,
                                      width=width, depth=depth, resolution=size)
            ms, source = cand.predicted_ms, cand.latency_source
        rows.append({"width": width, "arch": arch, "latency_ms": ms, "source": source,
                     "fits": ms <= report["budget_ms"]})
    fitting = [r for r in rows if r["fits"]]
    return rows, (max(fitting, key=lambda r: r["width"]) if fitting else None)




# --- the run folder's report and the loop's state ---------------------------------------------------

def _load_state(out: Path) -> dict:
    import json

    path = out / STATE_NAME
    if not path.is_file():
        return {"rounds": [], "next_width": None, "done": False}
    try:
        state = json.loads(path.read_text())
        state["rounds"] = [r for r in state["rounds"] if not r.get("error")]  # a failed round is done again
        state["done"] = False
        if state["rounds"]:
            last = state["rounds"][-1]
            state["next_width"] = last.get("next_width") if last.get("decision") == "next round" else None
            state["done"] = last.get("decision") != "next round"
        return state
    except (OSError, ValueError, KeyError, TypeError):
        raise EdgeKDError(f"{path} is unreadable", "delete the run folder's rounds and start again with --overwrite") from None


def _write_top_level(out: Path, state: dict, device, target, opts) -> dict | None:
    """RUN/report.json: the last measured round's report (paths into rounds/k) plus every round's record."""
    from edgekd.report import load_report, write_reports

    good = [r for r in state["rounds"] if r.get("measured_ms") is not None]
    if not good:
        return None
    last = good[-1]
    report = copy.deepcopy(load_report(out / last["out"]))
    prefix = last["out"] + "/"
    for art in report.get("artifacts", []):
        if art.get("path") and not Path(art["path"]).is_absolute():
            art["path"] = prefix + art["path"]
    for key in ("student", "teacher"):
        if isinstance(report.get(key), dict) and report[key].get("path"):
            report[key]["path"] = prefix + report[key]["path"]
    report["recommended"] = {**last["recommended"], "path": prefix + (last["recommended"].get("path") or "")}
    report["recommended"]["why"] = (f"measured fastest on {device.name} among the artifacts its {target.runtime} loads "
                                    f"within {opts.export.max_drop * 100:g} point(s) of the FP32 student")
    failed = [r for r in state["rounds"] if r.get("error")]
    report["device_loop"] = {
        "device": device.name, "ssh": device.ssh, "target": target.name, "max_rounds": opts.device.max_rounds,
        "under_budget_fraction": UNDER_BUDGET, "final_round": last["round"], "status": last["status"],
        "stopped": failed[-1]["error"] if failed else None,
        "sources": {"latency_ms": "measured:host: timed on this machine",
                    "target_latency_ms": f"measured:{device.name}: timed on the device over SSH; "
                                         f"predicted:{target.name}: the latency model (see each round's calibration)"},
        "rounds": [{k: v for k, v in r.items() if k != "recommended"} for r in state["rounds"]],
    }
    write_reports(out, report)
    return report


def _resume_hint(opts) -> str:
    return f"resume with: edgekd distill --resume --out {opts.out}"


def _round_failed(record: dict, state: dict, opts) -> EdgeKDError:
    good = [r for r in state["rounds"] if r.get("measured_ms") is not None]
    kept = (f"the run keeps round {good[-1]['round']} (measured {good[-1]['measured_ms']:.4g} ms)" if good
            else f"round {record['round']} is distilled in {opts.out}/{record['out']} but not measured")
    return EdgeKDError(f"round {record['round']}: {record['error']}; {kept}",
                       f"fix the device, then continue with: edgekd distill --resume --out {opts.out}")


def _print_rounds(state: dict, device) -> None:
    rows = []
    for r in state["rounds"]:
        pred = f"{r['predicted_ms']:.4g}" if r.get("predicted_ms") is not None else "-"
        meas = f"{r['measured_ms']:.4g}" if r.get("measured_ms") is not None else "-"
        rows.append([str(r["round"]), f"{r['width']:g}", r.get("artifact", "-"), pred, meas, f"{r['budget_ms']:g}",
                     r.get("status", "failed")])
    events.table(f"closed loop on {device.name}", ["round", "width", "artifact", "predicted ms", "measured ms",
                                                   "budget ms", "status"], rows)
    for r in state["rounds"]:
        events.info(f"  round {r['round']}: {r.get('why') or r.get('error')}")
