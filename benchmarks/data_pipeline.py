"""Is the image-file pipeline ever the bottleneck? Decode + augment images/s against a student's training step.

    python benchmarks/data_pipeline.py [--data ../shared/data/fashion-mnist] [--cache ~/.cache/edgekd-bench]
                                       [--sizes 64,128,224] [--workers 0,1,2] [--images 2000]
    python benchmarks/data_pipeline.py --memory [--epochs 1] [--image-size 128]

Writes Fashion-MNIST's 60,000 training images once as an ImageFolder tree of 3-channel JPEGs (112 px,
quality 90: a stand-in for a folder of photos) under ``--cache`` (outside the repository), then:

1. pipeline: images/s of edgekd's training loader (decode, random-resized crop + flip at each size,
   collate; edgekd.data.batches.FileBatches) with 0, 1 and 2 worker processes, no model;
2. model: images/s of a training step (forward, CE loss, backward, AdamW) of torchvision's
   mobilenet_v3_small (10 classes) on ready tensors, at each size;
3. end to end at each size: the same training step fed by the loader (interleaved with 2. for
   ``--rounds`` rounds, medians), and the ratio pipeline / model: above 1 the pipeline keeps up, and
   end-to-end ~= model alone says it is not the bottleneck on this machine (where loader workers
   and the model share the same cores).

``--memory`` runs ``edgekd distill`` for one epoch over 6,000 and over 60,000 of the files at
``--image-size`` and samples the resident memory of the run and every process it starts
(loader workers, the forkserver) every 0.2 s; it prints the peak of each process and of their sum.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

FASHION = REPO.parent / "shared" / "data" / "fashion-mnist"
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
WRITE_SIZE = 112


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_folder(src: Path, dest: Path, limit: int | None = None) -> Path:
    """train/<class>/NNNNN.jpg, 3-channel, WRITE_SIZE px; written once (a marker file says it is complete)."""
    from PIL import Image

    done = dest / ".complete"
    if done.exists():
        return dest
    x = read_idx(src / "train-images-idx3-ubyte.gz")
    y = read_idx(src / "train-labels-idx1-ubyte.gz")
    n = len(y) if limit is None else limit
    for c in CLASSES:
        (dest / "train" / c).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(n):
        im = Image.fromarray(x[i]).resize((WRITE_SIZE, WRITE_SIZE), Image.BICUBIC).convert("RGB")
        im.save(dest / "train" / CLASSES[y[i]] / f"{i:05d}.jpg", quality=90)
    done.write_text(f"{n} files in {time.perf_counter() - t0:.0f} s\n")
    return dest


def pipeline_rate(splits, size: int, workers: int, images: int, batch: int) -> float:
    from edgekd.data.batches import FileBatches

    s = splits.at_image_size(size)
    src = FileBatches(s, batch_size=batch, seed=0, device=torch.device("cpu"), channels_last=True, workers=workers)
    try:
        it = src.epoch(0)
        next(it)  # worker start-up is not throughput
        t0, seen = time.perf_counter(), 0
        for _, b in it:
            seen += len(b.idx)
            if seen >= images:
                break
        return seen / (time.perf_counter() - t0)
    finally:
        src.close()


def student(size: int):
    import torchvision

    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    return model.to(memory_format=torch.channels_last).train()


def model_rate(size: int, steps: int, batch: int) -> float:
    model = student(size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:  # after oneDNN has built its kernels for these shapes
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def end_to_end_rate(splits, size: int, workers: int, steps: int, batch: int) -> float:
    from edgekd.data.batches import FileBatches

    model = student(size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    src = FileBatches(splits.at_image_size(size), batch_size=batch, seed=0, device=torch.device("cpu"),
                      channels_last=True, workers=workers)
    try:
        it = src.epoch(0)
        t0, seen = None, 0
        for i, (_, b) in enumerate(it):
            loss = torch.nn.functional.cross_entropy(model(b.x), b.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i == 2:
                t0 = time.perf_counter()  # after the workers' start-up and the first steps
            elif i > 2:
                seen += len(b.idx)
            if i >= steps + 2:
                break
        return seen / (time.perf_counter() - t0)
    finally:
        src.close()


def throughput(args) -> None:
    from edgekd.data import load_data

    root = write_folder(Path(args.data), Path(args.cache).expanduser() / "fashion-mnist-jpg")
    t0 = time.perf_counter()
    splits = load_data(root, workers=1, mean=(0.286,) * 3, std=(0.353,) * 3)
    print(f"listed and split {len(splits.train) + len(splits.val) + len(splits.test)} files in "
          f"{time.perf_counter() - t0:.1f} s (train {len(splits.train)})", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    results = []
    for size in sizes:
        batch = args.batch
        pipe = {w: pipeline_rate(splits, size, w, args.images, batch) for w in workers}
        # The model alone and fed by the loader, interleaved round by round (other work on the
        # machine then weighs on both alike); medians of the rounds.
        models, e2es = [], {w: [] for w in workers}
        for _ in range(args.rounds):
            models.append(model_rate(size, args.steps, batch))
            for w in workers:
                e2es[w].append(end_to_end_rate(splits, size, w, args.steps, batch))
        model, e2e = statistics.median(models), {w: statistics.median(v) for w, v in e2es.items()}
        row = {"size": size, "model_img_s": round(model, 1), "load": os.getloadavg()[0],
               **{f"pipeline_w{w}_img_s": round(r, 1) for w, r in pipe.items()},
               **{f"end_to_end_w{w}_img_s": round(r, 1) for w, r in e2e.items()}}
        results.append(row)
        line = "  ".join(f"pipeline[{w} workers] {pipe[w]:7.1f}" for w in workers)
        print(f"{size:4d} px  model step {model:7.1f} img/s  {line}  img/s", flush=True)
        print("         end to end " + "  ".join(f"[{w} workers] {e2e[w]:7.1f} ({e2e[w] / model:.2f} of the model alone)"
                                        for w in workers), flush=True)
    best = results[-1]
    w = max(workers, key=lambda k: best[f"pipeline_w{k}_img_s"])
    ratio = best[f"pipeline_w{w}_img_s"] / best["model_img_s"]
    print(json.dumps(results))
    print(f"ratio_224={ratio:.2f} (pipeline with {w} workers / mobilenet_v3_small training step at {best['size']} px)")


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


def _rss_kb(pid: int) -> int:
    return _proc_kb(f"/proc/{pid}/status", "VmRSS:")


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (torch's libraries in every worker) counted once in a sum."""
    return _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def _proc_kb(path: str, key: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_and_sample(cmd: list[str], env: dict) -> dict:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_each: dict[int, int] = {}
    peak_sum, peak_pss, names = 0, 0, {}
    t0 = time.perf_counter()
    while proc.poll() is None:
        total = pss = 0
        for p in _tree(proc.pid):
            kb = _rss_kb(p)
            total += kb
            pss += _pss_kb(p)
            peak_each[p] = max(peak_each.get(p, 0), kb)
            if p not in names:
                try:
                    names[p] = open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:80]
                except OSError:
                    names[p] = "?"
        peak_sum, peak_pss = max(peak_sum, total), max(peak_pss, pss)
        time.sleep(0.2)
    log = proc.stdout.read()
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "peak_sum_mb": round(peak_sum / 1024, 1), "peak_pss_mb": round(peak_pss / 1024, 1),
            "peak_process_mb": round(max(peak_each.values()) / 1024, 1), "processes": len(peak_each),
            "top": sorted(((round(v / 1024, 1), names.get(p, "?")) for p, v in peak_each.items()), reverse=True)[:4],
            "log_tail": log[-1500:], "log": log}


def memory(args) -> None:
    from edgekd.models import ModelSpec, save_model

    cache = Path(args.cache).expanduser()
    big = write_folder(Path(args.data), cache / "fashion-mnist-jpg")
    small = write_folder(Path(args.data), cache / "fashion-mnist-jpg-6000", limit=6000)
    teacher = cache / "teacher-cnn-w0.5-rgb.safetensors"
    torch.manual_seed(0)
    save_model(teacher, ModelSpec("cnn", 10, 3, width=0.5).build(), ModelSpec("cnn", 10, 3, width=0.5), {"accuracy": 0.0})
    env = dict(os.environ, EDGEKD_CACHE_DIR=str(cache / "edgekd-cache"), COLUMNS="200")
    # The 6,000-file run twice: the second reads the first's teacher outputs from the disk cache.
    for name, root in (("6,000 files", small), ("6,000 files again (teacher outputs cached)", small), ("60,000 files", big)):
        out = cache / f"run-{root.name}"
        cmd = ["edgekd", "distill", "--target", "host", "--data", str(root), "--teacher", str(teacher),
               "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--width", str(args.width),
               "--out", str(out), "--overwrite", "--no-progress", "--bench-seconds", "0.2"]
        if args.workers is not None:
            cmd += ["--workers", args.workers]
        r = run_and_sample(cmd, env)
        print(f"{name}: rc {r['rc']}, {r['seconds']} s, peak RSS of the largest process {r['peak_process_mb']} MB, "
              f"peak of the sum over {r['processes']} processes {r['peak_sum_mb']} MB RSS, {r['peak_pss_mb']} MB PSS "
              f"(shared pages counted once)", flush=True)
        for mb, what in r["top"]:
            print(f"    {mb:8.1f} MB  {what}")
        for line in r["log"].splitlines():
            if any(k in line for k in ("stage timings", "train /", "pixels:", "could not be decoded", "student test")):
                print("    " + line.strip())
        if r["rc"] != 0:
            print(r["log_tail"])
            continue
        report = json.loads((out / "report.json").read_text())
        outputs = report["student"].get("teacher_cache") or {}
        print(f"    distill {report['timings_s'].get('distill')} s; teacher-output cache hits {outputs.get('hits')} "
              f"misses {outputs.get('misses')}; test accuracy {report['student']['accuracy']:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(FASHION))
    ap.add_argument("--cache", default="~/.cache/edgekd-bench")
    ap.add_argument("--sizes", default="64,128,224")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--images", type=int, default=2000, help="images timed per pipeline measurement")
    ap.add_argument("--steps", type=int, default=12, help="training steps timed per model measurement")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of model-alone and end-to-end timing")
    ap.add_argument("--memory", action="store_true", help="peak memory of a one-epoch distill over 6,000 and 60,000 files")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--width", type=float, default=0.5)
    args = ap.parse_args()
    print(f"CPU: {_cpu()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    if args.memory:
        args.workers = None if args.workers == "0,1,2" else args.workers
        memory(args)
    else:
        throughput(args)


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
