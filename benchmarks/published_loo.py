"""Leave one source out: every shipped profile predicts each published table it was not fitted on.

For each profile with published measurements (targets/measurements/<target>.yaml), each source is left
out in turn and the left-out figures are predicted as the profile would ship without them: a fit on the
profile's other sources of that runtime and precision (one or more figures), else its datasheet. Beside
it, the same prediction where nothing remains to fit on, but with each op class's efficiency borrowed
from the other profiles' fits (devices of the same kind, the same runtime first, every donor refitted
without the left-out source: edgekd.hardware.priors), an alternative the shipped model does not use.
One row per figure (measured / predicted, the op classes of the prediction), a line per profile and
source, a line per profile and dominant op class, the parallel fraction (thread scaling) each profile's
own one- and multi-thread figures fit, and last `loso_within=K/N`: figures predicted within
0.7x-1.43x as shipped (``loso_within_borrowed`` for the alternative).

    python benchmarks/published_loo.py [--target raspberry-pi-5 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekd.hardware.published import fit_parallel_fraction, leave_one_source_out, shipped_tables  # noqa: E402

BAND = (0.7, 1.43)


def inside(ratio: float) -> bool:
    return BAND[0] <= ratio <= BAND[1]


def summary(label: str, ratios: list[float]) -> str:
    ratios = sorted(ratios)
    return (f"{label}: measured/predicted {ratios[0]:.2f}-{ratios[-1]:.2f}, median {ratios[len(ratios) // 2]:.2f}, "
            f"within {BAND[0]}-{BAND[1]}x: {sum(map(inside, ratios))}/{len(ratios)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", action="append", help="only these profiles (default: every one with a table)")
    ap.add_argument("--json", default=None, help="write every record to this JSON file")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    tables = shipped_tables()
    records, borrowed = [], []
    for table in tables:
        if not args.target or table.target in args.target:
            records += leave_one_source_out(table)
            borrowed += leave_one_source_out(table, tables, borrow=True)
    print(f"{'target':15s} {'rt/prec':12s} {'source':16s} {'model':22s} {'meas ms':>8s} {'pred ms':>8s} "
          f"{'ratio':>6s} {'borrow':>6s}  classes")
    for r, b in zip(records, borrowed):
        shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r["shares"].items(), key=lambda kv: -kv[1]) if v >= 0.05)
        print(f"{r['target']:15s} {r['runtime'] + '/' + r['precision']:12s} {r['source'][:16]:16s} {r['model'][:22]:22s} "
              f"{r['measured_ms']:8.3f} {r['predicted_ms']:8.3f} {r['ratio']:6.2f} {b['ratio']:6.2f}  {shares}")
    print()
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((r["target"], r["runtime"], r["precision"], r["source"]), []).append(i)
    for (target, runtime, precision, source), idx in groups.items():
        print(summary(f"{target}: {runtime}/{precision} {source} ({records[idx[0]]['predicted_by']})",
                      [records[i]["ratio"] for i in idx]) + f"; borrowed {sum(inside(borrowed[i]['ratio']) for i in idx)}")
        for group, origin in borrowed[idx[0]]["borrowed"].items():
            print(f"    {group:11s} <- {origin}")
    print()
    by_class: dict[tuple, list[float]] = {}
    for r in records:
        dominant = max((kv for kv in r["shares"].items() if kv[0] != "per-inference"), key=lambda kv: kv[1])[0]
        by_class.setdefault((r["target"], dominant), []).append(r["ratio"])
    for (target, group), ratios in sorted(by_class.items()):
        print(summary(f"{target}: figures whose largest share is {group}", ratios))
    print()
    for table in tables:
        if args.target and table.target not in args.target:
            continue
        for precision in (None, *sorted({m.precision for m in table.measurements if m.use})):
            found = fit_parallel_fraction([table], precision=precision)
            if found:
                print(f"{table.target}{'' if precision is None else ' ' + precision}: its figures on several thread "
                      f"counts ({found['rows']}: {', '.join(found['groups'])}) fit parallel_fraction "
                      f"{found['parallel_fraction']:.2f} (sum of squared log errors {found['sse']:.3f}; linear "
                      f"scaling {found['linear_sse']:.3f})")
    seen = set()
    for r in records:
        key = (r["target"], r["source"], r["precision"])
        if r["parallel_fraction"] != 1.0 and key not in seen:
            seen.add(key)
            print(f"  {r['target']} {r['precision']} without {r['source']}: parallel_fraction "
                  f"{r['parallel_fraction']:.2f}, {r['parallel_fraction_origin']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"shipped": records, "borrowed": borrowed}, indent=1))
    print(f"loso_within_borrowed={sum(inside(r['ratio']) for r in borrowed)}/{len(borrowed)}")
    print(f"loso_within={sum(inside(r['ratio']) for r in records)}/{len(records)}")


if __name__ == "__main__":
    main()
