"""Export figures for real architectures: time, size and parity per format; INT8 accuracy drop of a distilled student.

    python benchmarks/export_zoo.py                              # mobilenet_v3_small, resnet18, efficientnet_b0
    python benchmarks/export_zoo.py resnet18 --formats onnx,ort-int8
    python benchmarks/export_zoo.py --run RUN_DIR --data ../shared/data/mnist   # a distilled student, labelled

torchvision models have random weights (nothing is downloaded) with BatchNorm statistics re-estimated on
the generated inputs, so parity is measured on non-trivial logits; top-1 agreement of INT8 on random
weights is low by nature (near-tied logits) and says nothing about a trained model; the --run mode
measures what matters there: test accuracy and its drop per artifact.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["mobilenet_v3_small", "resnet18", "efficientnet_b0"])
    parser.add_argument("--formats", default="all")
    parser.add_argument("--input", default="1x3x224x224")
    parser.add_argument("--run", type=Path, default=None, help="a distill run folder to export with labelled data")
    parser.add_argument("--data", type=Path, default=None, help="labelled data for --run (default: the run's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from edgekd.export.standalone import run_export

    out_root = args.out or Path(tempfile.mkdtemp(prefix="export-zoo-"))
    jobs = [(f"run:{args.run.name}", dict(run_dir=args.run, calib_data=args.data))] if args.run else \
        [(m, dict(model=f"torchvision:{m}", input_shape=args.input)) for m in args.models]
    for label, kw in jobs:
        out = out_root / label.replace(":", "_")
        report = run_export(out=out, formats=args.formats, progress=False, **kw)
        print(f"\n{label}  ({report['model']['params']:,} params, inputs: {report['data']['name']}, "
              f"export {report['timings_s']['export']:.1f} s in total)")
        print(f"{'format':<16}{'status':<9}{'export s':>9}{'MB':>8}{'max|diff|':>11}{'rel':>9}{'top-1 agr':>10}"
              f"{'accuracy':>10}{'drop pts':>9}")
        for row in report["artifacts"]:
            p = row.get("parity") or {}
            extra = row.get("extra") or {}
            rel = p["max_abs_diff"] / p["reference_max_abs"] if p.get("reference_max_abs") else None
            cells = [
                f"{row['name']:<16}", f"{row['status']:<9}",
                f"{extra['export_seconds']:>9.1f}" if "export_seconds" in extra else f"{'':>9}",
                f"{row['size_bytes'] / 1e6:>8.2f}" if row.get("size_bytes") else f"{'':>8}",
                f"{p['max_abs_diff']:>11.2e}" if p else f"{'':>11}",
                f"{rel:>9.1e}" if rel is not None else f"{'':>9}",
                f"{p['top1_agreement'] * 100:>9.1f}%" if p else f"{'':>10}",
                f"{row['accuracy']:>10.4f}" if row.get("accuracy") is not None else f"{'':>10}",
                f"{row['accuracy_drop'] * 100:>9.2f}" if row.get("accuracy_drop") is not None else f"{'':>9}",
            ]
            print("".join(cells) + (f"  {row['reason']}" if row["status"] != "ok" and row.get("reason") else ""))
    print(f"\nartifacts and reports under {out_root}")


if __name__ == "__main__":
    main()
