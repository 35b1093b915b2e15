"""Leave one source out: every shipped profile predicts each published table it was not fitted on.

For each profile with published measurements (targets/measurements/<target>.yaml), each source is left
out in turn, the profile is fitted on the other sources (or falls back to its datasheet when they are
too few), and the left-out figures are predicted. Prints one row per figure (measured / predicted and
the op classes that make up the prediction) and one summary line per profile and source, and the
last line `loso_within=K/N`: figures predicted within 0.7x-1.43x.

    python benchmarks/published_loo.py [--target jetson-nano ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekd.hardware.published import leave_one_source_out, shipped_table  # noqa: E402
from edgekd.hardware.targets import shipped_profiles  # noqa: E402

BAND = (0.7, 1.43)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", action="append", help="only these profiles (default: every one with a table)")
    ap.add_argument("--json", default=None, help="write every record to this JSON file")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    records = []
    for name in args.target or shipped_profiles():
        table = shipped_table(name)
        if table is None:
            continue
        records += leave_one_source_out(table)
    print(f"{'target':16s} {'rt/prec':16s} {'source':18s} {'model':24s} {'meas ms':>8s} {'pred ms':>8s} {'ratio':>6s}  classes")
    for r in records:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r["shares"].items(), key=lambda kv: -kv[1]) if v >= 0.05)
        print(f"{r['target']:16s} {r['runtime'] + '/' + r['precision']:16s} {r['source']:18s} {r['model'][:24]:24s} "
              f"{r['measured_ms']:8.3f} {r['predicted_ms']:8.3f} {r['ratio']:6.2f}  {shares}")
    print()
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["target"], r["runtime"], r["precision"], r["source"]), []).append(r)
    for (target, runtime, precision, source), rs in groups.items():
        ratios = sorted(r["ratio"] for r in rs)
        inside = sum(BAND[0] <= x <= BAND[1] for x in ratios)
        print(f"{target}: {runtime}/{precision} {source} ({rs[0]['predicted_by']}): measured/predicted "
              f"{ratios[0]:.2f}-{ratios[-1]:.2f}, median {ratios[len(ratios) // 2]:.2f}, within {BAND[0]}-{BAND[1]}x: {inside}/{len(rs)}")
    inside = sum(BAND[0] <= r["ratio"] <= BAND[1] for r in records)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    print(f"loso_within={inside}/{len(records)}")


if __name__ == "__main__":
    main()
