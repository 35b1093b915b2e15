"""Is the image-file pipeline ever the bottleneck? Decode + augment images/s against a student's training step.

    python benchmarks/data_pipeline.py [--data ../shared/data/fashion-mnist] [--cache ~/.cache/edgekd-bench]
                                       [--sizes 64,128,224] [--workers 0,1,2] [--images 2000]
    python benchmarks/data_pipeline.py --memory [--case photos|cnn] [--files 8000,60000] [--formats onnx]

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

``--memory`` runs ``edgekd distill`` for one epoch and samples the resident memory (RSS, and USS: the
pages only that process holds) of the run and of every process it starts (loader workers, the
forkserver) every 0.5 s (PSS and USS every 2 s); it prints the peak of each process and of their sum, per pipeline stage (read
from the stage banners the run prints), and names the stage where the largest process grows.
``--case photos`` (the default): 256 px JPEGs written from Fashion-MNIST with a colour tint per image
(``--files 8000,60000``), a torchvision ResNet-18 teacher (random weights, saved as safetensors: memory
does not depend on them) at its own 224 px, a mobilenet_v3_small student at 64 px. ``--case cnn``: 6,000
and 60,000 of the 112 px JPEGs with a small CNN teacher at ``--image-size``.
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


def _write_images(src: Path, dest: Path, limit: int | None, render) -> Path:
    """train/<class>/NNNNN.jpg from Fashion-MNIST's training images, ``render(i, image, n)`` giving each one's RGB
    PIL image; written once (a marker file says it is complete)."""
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
        render(i, x[i], n).save(dest / "train" / CLASSES[y[i]] / f"{i:05d}.jpg", quality=90)
    done.write_text(f"{n} files in {time.perf_counter() - t0:.0f} s\n")
    return dest


def write_folder(src: Path, dest: Path, limit: int | None = None) -> Path:
    """train/<class>/NNNNN.jpg, 3-channel, WRITE_SIZE px."""
    from PIL import Image

    return _write_images(src, dest, limit, lambda i, img, n: Image.fromarray(img).resize(
        (WRITE_SIZE, WRITE_SIZE), Image.BICUBIC).convert("RGB"))


PHOTO_SIZE = 256


def write_photos(src: Path, dest: Path, limit: int | None = None) -> Path:
    """train/<class>/NNNNN.jpg: Fashion-MNIST upsampled to PHOTO_SIZE px and tinted with a colour per image
    (a stand-in for a folder of 256 px photos)."""
    from PIL import Image

    tints = {}

    def render(i, img, n):
        if "all" not in tints:  # one draw for the folder, as before: image i takes row i
            tints["all"] = np.random.default_rng(0).uniform(0.3, 1.0, (n, 3)).astype(np.float32)
        tint = tints["all"][i]
        grey = np.asarray(Image.fromarray(img).resize((PHOTO_SIZE, PHOTO_SIZE), Image.BICUBIC), np.float32)
        return Image.fromarray(np.clip(grey[..., None] * tint + 40 * (1 - tint), 0, 255).astype(np.uint8))

    return _write_images(src, dest, limit, render)


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


def _smaps_kb(pid: int) -> tuple[int, int]:
    """(PSS, USS) from one read of smaps_rollup: proportional set size (shared pages such as torch's libraries
    counted once in a sum) and unique set size (the pages only this process holds: what ending it would free).
    Reading it walks the page tables, so it is sampled less often than RSS."""
    got = {"Pss:": 0, "Private_Clean:": 0, "Private_Dirty:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key = line.split(" ", 1)[0]
                if key in got:
                    got[key] = int(line.split()[1])
    except OSError:
        pass
    return got["Pss:"], got["Private_Clean:"] + got["Private_Dirty:"]


def _proc_kb(path: str, key: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# The pipeline's stage banners ("▶ Loading data", ...) and the stage each one starts.
STAGES = (("Loading data", "data"), ("Choosing", "select"), ("Teacher", "teacher"), ("Is the teacher worth", "worth"),
          ("Tuning", "tune"), ("Distilling", "distill"), ("Exporting", "export"), ("Measuring", "bench"),
          ("Baselines", "compare"), ("Writing reports", "report"))


def _stage_of(line: str) -> str | None:
    text = line.strip().lstrip("▶").strip()
    return next((name for prefix, name in STAGES if text.startswith(prefix)), None) if line.strip().startswith("▶") else None


def _sample(proc, per_stage: dict, now: str, peaks: dict) -> None:
    """One sample of every process in ``proc``'s tree into the stage ``now`` and the overall ``peaks``."""
    st = per_stage.setdefault(now, {"rss_sum_mb": 0.0, "rss_main_mb": 0.0, "rss_max_process_mb": 0.0,
                                    "uss_max_process_mb": 0.0, "processes": 0, "t0": time.perf_counter()})
    total = pss = 0
    tree = _tree(proc.pid)
    peaks["samples"] = peaks.get("samples", 0) + 1
    smaps = peaks["samples"] % 4 == 1   # PSS and USS every 4th sample (2 s): reading them costs CPU
    for p in tree:
        kb = _rss_kb(p)
        total += kb
        peaks["each"][p] = max(peaks["each"].get(p, 0), kb)
        st["rss_max_process_mb"] = max(st["rss_max_process_mb"], round(kb / 1024, 1))
        if smaps:
            p_pss, p_uss = _smaps_kb(p)
            pss += p_pss
            st["uss_max_process_mb"] = max(st["uss_max_process_mb"], round(p_uss / 1024, 1))
        if p not in peaks["names"]:
            try:
                peaks["names"][p] = open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:80]
            except OSError:
                peaks["names"][p] = "?"
    st["rss_main_mb"] = max(st["rss_main_mb"], round(_rss_kb(proc.pid) / 1024, 1))
    st["rss_sum_mb"] = max(st["rss_sum_mb"], round(total / 1024, 1))
    st["processes"] = max(st["processes"], len(tree))
    peaks["sum"], peaks["pss"] = max(peaks["sum"], total), max(peaks["pss"], pss)  # pss 0 when not read


def _say_stage(name: str, st: dict) -> None:
    print(f"  [live] {name:8s} ended after {time.perf_counter() - st['t0']:7.0f} s: main {st['rss_main_mb']:.0f} MB, "
          f"largest process {st['rss_max_process_mb']:.0f} MB (USS {st['uss_max_process_mb']:.0f}), sum {st['rss_sum_mb']:.0f} MB, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)


def run_and_sample(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``, sampling every 0.5 s the RSS (USS and PSS every 2 s) of it and of every process it starts; peaks
    overall, per process and per pipeline stage (read from the stage banners it prints), each stage's
    peaks printed as it ends. Ctrl-C or SIGTERM stops the run and keeps what was sampled (rc "stopped")."""
    import resource
    import signal
    import threading

    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    stage = ["start"]

    def read():
        for line in proc.stdout:
            lines.append(line)
            stage[0] = _stage_of(line) or stage[0]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peaks = {"each": {}, "names": {}, "sum": 0, "pss": 0}
    per_stage: dict[str, dict] = {}
    t0, rc, last = time.perf_counter(), None, None
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while proc.poll() is None:
            now = stage[0]
            if last is not None and now != last:
                _say_stage(last, per_stage[last])
            last = now
            _sample(proc, per_stage, now, peaks)
            time.sleep(0.5)
        rc = proc.returncode
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        rc = "stopped"
    finally:
        signal.signal(signal.SIGTERM, old)
    if last is not None:
        _say_stage(last, per_stage[last])
    reader.join(timeout=5)
    log = "".join(lines)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    each, names = peaks["each"], peaks["names"]
    return {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(cpu, 1),
            "load": round(os.getloadavg()[0], 1), "peak_sum_mb": round(peaks["sum"] / 1024, 1),
            "peak_pss_mb": round(peaks["pss"] / 1024, 1),
            "peak_process_mb": round(max(each.values(), default=0) / 1024, 1), "processes": len(each),
            "top": sorted(((round(v / 1024, 1), names.get(p, "?")) for p, v in each.items()), reverse=True)[:4],
            "stages": per_stage, "log_tail": log[-1500:], "log": log}


def print_memory(name: str, r: dict) -> None:
    print(f"{name}: rc {r['rc']}, {r['seconds']} s ({r.get('cpu_seconds')} CPU-s, load {r.get('load')} at the end), peak RSS of the largest process {r['peak_process_mb']} MB, "
          f"peak of the sum over {r['processes']} processes {r['peak_sum_mb']} MB RSS, {r['peak_pss_mb']} MB PSS "
          f"(shared pages counted once)", flush=True)
    for mb, what in r["top"]:
        print(f"    {mb:8.1f} MB  {what}")
    print(f"    {'stage':10s} {'main RSS':>10s} {'max process RSS':>16s} {'max process USS':>16s} {'sum RSS':>10s}  processes")
    before = 0.0
    for stage, st in r["stages"].items():
        grew = st["rss_max_process_mb"] - before
        print(f"    {stage:10s} {st['rss_main_mb']:10.1f} {st['rss_max_process_mb']:16.1f} {st['uss_max_process_mb']:16.1f} "
              f"{st['rss_sum_mb']:10.1f}  {st['processes']:3d}{'   <- grows ' + format(grew, '+.0f') + ' MB' if grew > 200 else ''}")
        before = max(before, st["rss_max_process_mb"])
    if r["stages"]:
        top = max(r["stages"].items(), key=lambda kv: kv[1]["rss_max_process_mb"])
        print(f"    the peak is in stage {top[0]} ({top[1]['rss_max_process_mb']} MB in one process)", flush=True)


def memory(args) -> None:
    if args.case == "photos":
        return memory_photos(args)
    from edgekd.models import ModelSpec, save_model

    cache = Path(args.cache).expanduser()
    big = write_folder(Path(args.data), cache / "fashion-mnist-jpg")
    small = write_folder(Path(args.data), cache / "fashion-mnist-jpg-6000", limit=6000)
    teacher = cache / "teacher-cnn-w0.5-rgb.safetensors"
    torch.manual_seed(0)
    save_model(teacher, ModelSpec("cnn", 10, 3, width=0.5).build(), ModelSpec("cnn", 10, 3, width=0.5), {"accuracy": 0.0})
    env = dict(os.environ, EDGEKD_CACHE_DIR=str(cache / "edgekd-cache"), COLUMNS="200", PYTHONUNBUFFERED="1")
    # The 6,000-file run twice: the second reads the first's teacher outputs from the disk cache.
    for name, root in (("6,000 files", small), ("6,000 files again (teacher outputs cached)", small), ("60,000 files", big)):
        out = cache / f"run-{root.name}"
        cmd = ["edgekd", "distill", "--target", "host", "--data", str(root), "--teacher", str(teacher),
               "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--width", str(args.width),
               "--out", str(out), "--overwrite", "--no-progress", "--bench-seconds", "0.2"]
        if args.workers is not None:
            cmd += ["--workers", args.workers]
        r = run_and_sample(cmd, env)
        print_memory(name, r)
        _summarise_run(r, out)


def _summarise_run(r: dict, out: Path) -> None:
    for line in r["log"].splitlines():
        if any(k in line for k in ("stage timings", "train /", "pixels:", "could not be decoded", "student test")):
            print("    " + line.strip())
    if r["rc"] != 0:
        print(r["log_tail"])
        return
    report = json.loads((out / "report.json").read_text())
    outputs = report["student"].get("teacher_cache") or {}
    print(f"    timings {report.get('timings_s')}; teacher-output cache hits {outputs.get('hits')} "
          f"misses {outputs.get('misses')}; test accuracy {report['student']['accuracy']:.4f}", flush=True)


def memory_photos(args) -> None:
    """A folder of 256 px photos, torchvision's ResNet-18 as the teacher (random weights: memory does not
    depend on them), mobilenet_v3_small at 64 px as the student, one epoch: 8,000 files, then 60,000."""
    cache = Path(args.cache).expanduser()
    env = dict(os.environ, EDGEKD_CACHE_DIR=str(cache / "edgekd-cache-photos"), COLUMNS="200",
               PYTHONUNBUFFERED="1")  # the stage banners arrive as they are printed
    counts = [int(n) for n in args.files.split(",")]
    weights = cache / "resnet18-random-10.safetensors"
    if not weights.exists():
        import torchvision
        from safetensors.torch import save_file

        torch.manual_seed(0)
        save_file(torchvision.models.resnet18(num_classes=10).state_dict(), str(weights))
    peaks = {}
    for n in counts:
        root = write_photos(Path(args.data), cache / f"photos-{n}", limit=None if n >= 60000 else n)
        out = cache / f"run-photos-{n}-t{args.teacher_image_size or 224}"  # two sizes may run side by side
        cmd = ["edgekd", "distill", "--target", "host", "--data", str(root), "--teacher", "torchvision:resnet18",
               "--teacher-weights", str(weights), "--student", "mobilenet_v3_small", "--image-size", "64",
               "--epochs", str(args.epochs), "--width", "1", "--force", "--out", str(out), "--overwrite",
               "--no-progress", "--bench-seconds", "0.2"]  # --force: the random-weight teacher is near chance
        cmd += ["--formats", args.formats] if args.formats else []
        cmd += ["--workers", args.workers] if args.workers is not None else []
        cmd += ["--teacher-image-size", str(args.teacher_image_size)] if args.teacher_image_size else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        print(f"{n:,} photos: {' '.join(cmd)}", flush=True)
        r = run_and_sample(cmd, env)
        print_memory(f"{n:,} photos", r)
        _summarise_run(r, out)
        peaks[n] = r["peak_process_mb"]
        if r["rc"] == "stopped":
            break
    if len(peaks) > 1:
        first = peaks[counts[0]]
        print("peak of the largest process by file count: " + ", ".join(
            f"{n:,}: {mb:.0f} MB ({mb / first - 1:+.0%})" for n, mb in peaks.items()))


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
    ap.add_argument("--case", choices=("photos", "cnn"), default="photos",
                    help="--memory: 256 px photos with a ResNet-18 teacher and mobilenet_v3_small (photos), "
                         "or 112 px Fashion-MNIST JPEGs with a small CNN teacher (cnn)")
    ap.add_argument("--files", default="8000,60000", help="--memory --case photos: folder sizes")
    ap.add_argument("--formats", default=None, help="--memory: export formats (default: the run's own)")
    ap.add_argument("--teacher-image-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
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
