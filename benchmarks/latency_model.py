"""How well the host latency model predicts networks it was not fitted on (measured vs predicted, side by side).

1. Fit the host coefficients on generated probe networks (``edgekd profile``'s procedure, seed 0).
2. Predict a held-out set of different architectures: edgekd cnn students at other widths, depths,
   kernel sizes and resolutions, probe networks from another seed, and torchvision models
   (mobilenet_v3_small, resnet18, ...) with random weights.
3. Measure every network (fit and held-out alike, in interleaved passes, the median pass kept) here with
   ONNX Runtime under the host profile's conditions (one intra-op thread, CPU time of one batch-1
   inference, the quietest rounds' 10th percentile) and print predicted vs measured for the held-out ones.

Every network, fit and held-out, is costed as the graph ONNX Runtime executes here (NCHWc convs, layout
reorders, fallback convs; ``executed_graph_cost``), exactly as ``edgekd predict --target host`` does.

Last line: ``within10=<fraction of held-out models predicted within +/-10%>``.

    python benchmarks/latency_model.py [--fit-count 80] [--probe-holdout 20] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekd.hardware import load_target  # noqa: E402
from edgekd.hardware.calibration import affordable_probes, fit_host, measure_many  # noqa: E402
from edgekd.hardware.graph import cached_onnx, export_onnx  # noqa: E402
from edgekd.hardware.hostfacts import cpu_summary, measure_host_facts  # noqa: E402
from edgekd.hardware.latency import target_graph_cost  # noqa: E402
from edgekd.hardware.targets import cache_dir  # noqa: E402

# (width, depth, kernel, resolution): none of these is a probe network.
CNN_HOLDOUT = [(0.25, 1, 3, 28), (0.5, 2, 3, 28), (1.0, 1, 5, 28), (1.5, 3, 3, 28), (2.0, 1, 7, 28), (3.0, 2, 3, 28),
               (0.75, 1, 3, 56), (1.0, 2, 5, 56), (2.0, 3, 3, 32), (4.0, 2, 3, 28), (1.25, 1, 3, 64), (0.375, 3, 5, 28)]
TORCHVISION_HOLDOUT = ["mobilenet_v3_small", "resnet18", "mobilenet_v2", "squeezenet1_1", "mnasnet0_5",
                       "shufflenet_v2_x0_5", "efficientnet_b0", "regnet_x_400mf"]


def torchvision_onnx(name: str) -> Path:
    import torch
    import torchvision

    path = cache_dir() / "graphs" / f"benchmark-tv-{name}-{torch.__version__}.onnx"
    if not path.is_file():
        torch.manual_seed(0)
        export_onnx(torchvision.models.get_model(name, weights=None), [1, 3, 224, 224], path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit-count", type=int, default=80, help="probe networks to fit on")
    ap.add_argument("--probe-holdout", type=int, default=20, help="held-out probe networks (another seed)")
    ap.add_argument("--passes", type=int, default=5, help="interleaved measurement passes (median kept)")
    ap.add_argument("--quick", action="store_true", help="fewer networks (a smoke run, not the reported figure)")
    ap.add_argument("--dump", default=None, help="write the networks, measured ms and fitted coefficients to this JSON")
    ap.add_argument("--device-table", default=None, metavar="FILE",
                    help="instead: leave-half-out calibration and prediction on a published device table "
                         "(targets/measurements/*.yaml)")
    ap.add_argument("--splits", type=int, default=20, help="random halvings for --device-table")
    ap.add_argument("--ship", action="store_true", help="with --device-table: write targets/calibrations/<target>.json")
    args = ap.parse_args()
    if args.device_table:
        device_table(args.device_table, splits=args.splits, ship=args.ship)
        return
    if args.quick:
        args.fit_count, args.probe_holdout = 30, 5

    target = load_target("host")
    m = target.channel_multiple
    t0 = time.time()
    print(f"cpu: {cpu_summary()}", flush=True)
    facts = measure_host_facts(target.threads)
    print(f"host: {target.runtime}, threads={target.threads} (CPU time per inference), channel block={m}; measured: "
          f"run() {facts.inference_overhead_ms * 1e3:.2f} us, {facts.dispatch_ms * 1e3:.3f} us per kernel, DRAM "
          f"{facts.dram_read_gbs:.1f} GB/s, effective cache {facts.cache_mb} MB, private cache {facts.private_cache_mb} MB, last-level cache "
          f"{facts.llc_mb} MB at {facts.llc_read_gbs or float('nan'):.1f} GB/s", flush=True)
    fit_probes = affordable_probes(args.fit_count, 0, target.runtime, 600.0)
    held: list[tuple[str, Path]] = []
    for w, d, k, r in CNN_HOLDOUT:
        held.append((f"cnn w{w:g} d{d} k{k} {r}x{r}",
                     cached_onnx("cnn", num_classes=10, input_shape=(1, 1, r, r), width=w, depth=d, kernel=k)))
    for spec, path in affordable_probes(args.probe_holdout, 1, target.runtime, 600.0):
        held.append((f"probe-s1 {len(spec['blocks'])} blocks {spec['resolution']}px", path))
    tv_names = TORCHVISION_HOLDOUT if not args.quick else TORCHVISION_HOLDOUT[:2]
    for name in tv_names:
        held.append((f"torchvision {name}", torchvision_onnx(name)))
    print(f"exported {len(fit_probes)} fit and {len(held)} held-out networks ({time.time() - t0:.0f} s); measuring "
          f"all of them in {args.passes} interleaved passes...", flush=True)

    # Fit and held-out networks are timed in the same interleaved passes, so load on the machine affects both alike.
    paths = [p for _, p in fit_probes] + [p for _, p in held]
    ms = measure_many(paths, threads=target.threads, passes=args.passes, time_budget_s=0.2, progress=sys.stderr.isatty())
    fit = fit_host(target, paths[:len(fit_probes)],
                   [[1, s["in_channels"], s["resolution"], s["resolution"]] for s, _ in fit_probes],
                   ms[:len(fit_probes)], save=False, facts=facts)
    coeffs = fit.coefficients
    print(f"fit set ({fit.fit['method']}): {fit.n_measurements} probe networks, median error {fit.fit['median_abs_pct_err']:.1f}%, "
          f"within10={fit.fit['within10']:.2f}, within20={fit.fit['within20']:.2f}; DRAM read "
          f"{fit.fit.get('dram_read_gbs', float('nan')):.1f} GB/s  ({time.time() - t0:.0f} s)", flush=True)

    print(f"\n{'held-out model':36s} {'MFLOPs':>9s} {'kernels':>7s} {'predicted ms':>13s} {'measured ms':>12s} {'error':>7s}")
    errors = []
    for (name, path), measured in zip(held, ms[len(fit_probes):]):
        cost = target_graph_cost(path, target)
        predicted = float(coeffs.row(cost) @ coeffs.vector())
        err = (predicted - measured) / measured
        errors.append(err)
        print(f"{name:36s} {cost.flops / 1e6:9.1f} {len(cost.kernels):7d} {predicted:13.3f} {measured:12.3f} {100 * err:+6.1f}%")
    if args.dump:
        import json

        Path(args.dump).write_text(json.dumps({
            "cpu": cpu_summary(), "host": facts.to_dict(), "coefficients": coeffs.to_dict(),
            "fit": [{"name": f"probe-s0 {i}", "path": str(p), "ms": t} for i, ((_, p), t) in enumerate(zip(fit_probes, ms))],
            "held": [{"name": n, "path": str(p), "ms": t} for (n, p), t in zip(held, ms[len(fit_probes):])]}, indent=1))
    errors = np.abs(np.array(errors))
    tv = errors[-len(tv_names):]
    print(f"\nheld-out: {len(errors)} models, median |error| {100 * np.median(errors):.1f}%, "
          f"within20={np.mean(errors <= 0.20):.2f}; torchvision only: within10={np.mean(tv <= 0.10):.2f}")
    print(f"total {time.time() - t0:.0f} s; cpu: {cpu_summary()}")
    print(f"within20={np.mean(errors <= 0.20):.3f}")
    print(f"within10={np.mean(errors <= 0.10):.3f}")


def device_table(path: str, *, splits: int, ship: bool) -> None:
    """Leave-half-out calibration on a published table: print each measurement's datasheet, leave-one-out and
    leave-half-out predictions, and within10/within20 of the leave-half-out predictions."""
    from edgekd.hardware.published import calibrate_table, load_table, write_shipped

    table = load_table(path)
    t0 = time.time()
    result = calibrate_table(table, splits=splits, progress=lambda msg: print(f"calibrating {msg} ...", flush=True))
    print(f"\n{table.target}: {table.device}  ({len(table.measurements)} published measurements, {time.time() - t0:.0f} s)")
    for key, src in result["sources"].items():
        print(f"  source {key}: {src['url']}\n      {src['where']}")
    pf = result["parallel_fraction"]
    print(f"  thread scaling: parallel fraction {pf['value']:.2f} ({pf['origin']})")
    pooled = []
    for e in result["calibrations"]:
        print(f"\n{e['runtime']}/{e['precision']}: {e['n_measurements']} measurements, fit: {e['method']}")
        if e.get("parallel_fraction") and e["parallel_fraction"] != pf:
            print(f"  its thread scaling: parallel fraction {e['parallel_fraction']['value']:.2f} "
                  f"({e['parallel_fraction']['origin']})")
        print(f"  {'model':34s} {'measured':>9s} {'datasheet':>10s} {'(x)':>6s} {'held-out':>9s} {'err':>7s} "
              f"{'half-out':>9s} {'err':>7s}")
        if e["leave_one_out"] is None:  # too few figures for held-out errors: the fit only
            for r in e["rows"]:
                print(f"  {r['name'][:34]:34s} {r['measured_ms']:9.3g} {r['datasheet_ms']:10.3g} "
                      f"{r['datasheet_ms'] / r['measured_ms']:6.2f}  fitted {r['fitted_ms']:.3g}")
            print(f"  {e['n_measurements']} figures: fitted without held-out errors; predictions keep the datasheet's interval")
            continue
        for r in e["rows"]:
            print(f"  {r['name'][:34]:34s} {r['measured_ms']:9.3g} {r['datasheet_ms']:10.3g} "
                  f"{r['datasheet_ms'] / r['measured_ms']:6.2f} {r['held_out_ms']:9.3g} "
                  f"{100 * (r['held_out_ms'] / r['measured_ms'] - 1):+6.1f}% {r['half_out_ms']:9.3g} "
                  f"{100 * (r['half_out_ms'] / r['measured_ms'] - 1):+6.1f}%")
        ds, loo, lho = e["datasheet"], e["leave_one_out"], e["leave_half_out"]
        print(f"  datasheet: median |error| {ds['median_abs_pct_err']:.1f}%, within20={ds['within20']:.2f}; "
              f"leave-one-out: median {loo['median_abs_pct_err']:.1f}%, within10={loo['within10']:.2f}, "
              f"within20={loo['within20']:.2f}")
        print(f"  leave-half-out ({lho['splits']} random halvings, {lho['n']} held-out predictions): median |error| "
              f"{lho['median_abs_pct_err']:.1f}%, within10={lho['within10']:.3f}, within20={lho['within20']:.3f}")
        if e["interval"]:
            iv = e["interval"]
            print(f"  interval every prediction carries: {100 * iv['level']:.0f}% x{iv['low']:.2f}..x{iv['high']:.2f} "
                  f"({iv['method']})")
        pooled.append(lho)
    if result["uncalibrated"]:
        print("\nnot calibrated (too few for their runtime/precision, or left out): datasheet prediction only")
        for r in result["uncalibrated"]:
            why = f"  [{r['why']}]" if r.get("why") else ""
            print(f"  {r['name'][:34]:34s} {r['runtime']}/{r['precision']} measured {r['measured_ms']:.3g} ms, "
                  f"datasheet {r['datasheet_ms']:.3g} ms (x{r['datasheet_ms'] / r['measured_ms']:.2f}){why}")
    if ship:
        print(f"\nwrote {write_shipped(table, result)}")
    n = sum(p["n"] for p in pooled) or 1
    print(f"\nwithin20={sum(p['within20'] * p['n'] for p in pooled) / n:.3f}")
    print(f"within10={sum(p['within10'] * p['n'] for p in pooled) / n:.3f}")


if __name__ == "__main__":
    main()
