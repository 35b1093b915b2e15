"""Distil one student, on one or many processes: ``torchrun --nproc_per_node=N -m edgekd.distill ...``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgekd.errors import EdgeKDError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data_path", default=None, help="IDX folder, ImageFolder tree or .npz (default: packaged MNIST)")
@click.option("--teacher", "teacher_paths", multiple=True, help="teacher weights (.safetensors); repeat for an ensemble")
@click.option("--arch", default="cnn", show_default=True, help="student model family")
@click.option("--width", default=1.0, show_default=True, type=float, help="student width multiplier")
@click.option("--depth", default=1, show_default=True, type=int)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="folder for checkpoints and weights")
@click.option("--loss", default="kd", show_default=True, help="registered loss or combination, e.g. kd+at:0.5")
@click.option("--mode", default="offline", show_default=True, type=click.Choice(["offline", "online", "self"]))
@click.option("--epochs", default=None, type=int)
@click.option("--batch-size", default=None, type=int, help="per process")
@click.option("--lr", default=None, type=float)
@click.option("--temperature", default=None, type=float)
@click.option("--alpha", default=None, type=float)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--image-size", type=int, default=None, help="student input in pixels (default: the data's own)")
@click.option("--workers", type=int, default=None, help="processes decoding image files (default: cores - 1)")
@click.option("--strict", is_flag=True, help="stop at the first image file that will not decode")
@click.option("--checkpoint-every-steps", type=int, default=0, help="also checkpoint every N steps inside an epoch")
@click.option("--resume", is_flag=True, help="continue from the checkpoint in --out")
def main(data_path, teacher_paths, arch, width, depth, out_dir, loss, mode, epochs, batch_size, lr, temperature,
         alpha, device, seed, image_size, workers, strict, checkpoint_every_steps, resume):
    """Distil a student from a teacher (the cached default teacher when --teacher is not given).

    Under torchrun every process trains on its share of each batch (DistributedDataParallel: NCCL on
    GPUs, gloo on CPU); rank 0 writes the checkpoints, OUT/final.safetensors and OUT/result.json.
    """
    import torch

    from edgekd.data import load_data
    from edgekd.distill import TrainConfig, get_teacher, train
    from edgekd.fsutil import atomic_write_json
    from edgekd.cli.render import rendering
    from edgekd.models import family_spec

    try:
        splits = load_data(data_path, seed=seed, image_size=image_size, workers=workers, strict=strict)
        overrides = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature,
                                           alpha=alpha).items() if v is not None}
        cfg = TrainConfig(loss=loss, mode=mode, device=device, seed=seed, checkpoint_every_steps=checkpoint_every_steps,
                          **overrides).validate()
        rank0 = int(os.environ.get("RANK", "0")) == 0
        teacher = None
        if cfg.loss != "ce" or mode == "online":
            # Only rank 0 may train (and cache) the default teacher; the others then load it.
            if not rank0 and not teacher_paths:
                _wait_for_rank0(cfg.device)
            with rendering(progress=rank0, verbose=rank0):
                teacher, _, info = get_teacher(splits, teacher_path=list(teacher_paths) or None, progress=rank0,
                                               temperature=cfg.temperature)
            if rank0 and not teacher_paths:
                _wait_for_rank0(cfg.device)
        spec = family_spec(arch, splits.num_classes, tuple(splits.input_shape), width=width, depth=depth)
        torch.manual_seed(seed)
        student = spec.build()
        with rendering(progress=rank0, verbose=rank0):  # epochs and bars, drawn from the loop's events
            result = train(student, teacher, splits, cfg, ckpt_dir=out_dir, resume=resume, progress=rank0, spec=spec)
        if rank0:
            atomic_write_json(out_dir / "result.json", {"spec": spec.to_dict(), "config": cfg.to_dict(), **result.to_dict()})
            click.echo(f"student {arch} width {width}: test accuracy {result.accuracy:.4f} "
                       f"({result.epochs_run} epochs, {result.seconds:.0f}s) -> {result.weights_path}")
    except EdgeKDError as err:
        click.echo(f"error: {err}", err=True)
        raise SystemExit(err.exit_code) from None


def _wait_for_rank0(device: str) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from edgekd.distill.train import resolve_device

        cuda = resolve_device(device).type == "cuda"
        if cuda:
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        dist.barrier()

if __name__ == "__main__":
    main()
