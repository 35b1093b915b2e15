"""How pixels become model inputs: size, resize rule, channels, normalisation, train-time crops; one record for every consumer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from edgekd.errors import EdgeKDError

TRAIN_CROPS = ("random-resized-crop", "none")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# Decoders tried for these suffixes; anything Pillow opens works, these are what folders are scanned for.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


@dataclass(frozen=True)
class Preprocess:
    """Everything between an image file (or array) and the float tensor a model sees.

    Evaluation (and calibration, accuracy checks, ``edgekd bench``): resize the shorter side to
    ``round(image_size / crop_pct)``, centre-crop ``image_size``, convert to ``channels``, scale to
    [0, 1], subtract ``mean``, divide by ``std``. Training of photo data: a random-resized crop taken
    once at native resolution (``crop_scale`` of the area, aspect 3/4..4/3), resized to the
    student's ``image_size`` and to the teacher's ``teacher_image_size``, then flipped when ``flip``.
    """

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    teacher_image_size: int | None = None     # None: the teacher takes the student's size
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    train_crop: str = "none"                  # "random-resized-crop" for photo folders; arrays use TrainConfig's shifts
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = False
    mean_source: str = "train"                # where mean/std came from: teacher | user | train | train-sample
    view_reason: str = ""                     # why these crops and flips (edgekd.data.views), "" where not chosen

    def __post_init__(self):
        checks = [
            (isinstance(self.image_size, int) and 8 <= self.image_size <= 4096,
             f"image size must be 8..4096 pixels, got {self.image_size}", "use e.g. --image-size 224"),
            (self.teacher_image_size is None or 8 <= self.teacher_image_size <= 4096,
             f"teacher image size must be 8..4096 pixels, got {self.teacher_image_size}", "use e.g. --teacher-image-size 224"),
            (self.channels in (1, 3), f"images must have 1 or 3 channels, got {self.channels}", "use grey or RGB images"),
            (len(self.mean) == self.channels and len(self.std) == self.channels,
             f"--mean/--std need {self.channels} value(s) for {self.channels}-channel images, got {len(self.mean)}/{len(self.std)}",
             "give one value per channel, e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"),
            (all(math.isfinite(m) for m in self.mean) and all(math.isfinite(s) and s > 0 for s in self.std),
             f"--std values must be > 0 and mean/std finite, got mean {self.mean} std {self.std}", "e.g. --std 0.229,0.224,0.225"),
            (0.1 <= self.crop_pct <= 1.0, f"crop fraction must be in [0.1, 1], got {self.crop_pct}", "use e.g. 0.875 (224 of 256)"),
            (self.interpolation in INTERPOLATIONS, f"unknown interpolation {self.interpolation!r}", f"use one of {', '.join(INTERPOLATIONS)}"),
            (self.train_crop in TRAIN_CROPS, f"unknown train crop {self.train_crop!r}", f"use one of {', '.join(TRAIN_CROPS)}"),
            (0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0,
             f"crop scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}", "use e.g. --crop-scale 0.08,1"),
        ]
        for ok, what, how in checks:
            if not ok:
                raise EdgeKDError(what, how)

    @property
    def teacher_size(self) -> int:
        return self.teacher_image_size or self.image_size

    def views(self) -> dict:
        """The training views and why they were chosen (``report.json`` ``data.views``)."""
        return {"train_crop": self.train_crop, "crop_scale": list(self.crop_scale), "flip": self.flip,
                "reason": self.view_reason or "not chosen from the data"}

    @property
    def resize_rule(self) -> str:
        side = round(self.image_size / self.crop_pct)
        return (f"shorter side to {side} px ({self.interpolation}, antialiased), centre crop {self.image_size}x{self.image_size}"
                if side != self.image_size else
                f"shorter side to {side} px ({self.interpolation}, antialiased), centre crop to square")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = [round(float(m), 6) for m in self.mean]
        d["std"] = [round(float(s), 6) for s in self.std]
        d["crop_scale"] = list(self.crop_scale)
        d["resize"] = self.resize_rule
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("mean", "std", "crop_scale"):
            if key in kw:
                kw[key] = tuple(float(v) for v in kw[key])
        return cls(**kw)

    def eval_key(self, size: int) -> str:
        """What decides an evaluation view's pixels (keys the decoded-image cache)."""
        return f"{size}|{self.channels}|{self.crop_pct}|{self.interpolation}"

    def train_key(self) -> str:
        """What decides a training view's pixels, beyond the seed (keys the teacher-output cache)."""
        return f"{self.image_size}|{self.teacher_size}|{self.channels}|{self.train_crop}|{self.crop_scale}|{self.flip}|{self.interpolation}"

    # ---- tensors ----------------------------------------------------------------------------

    def eval_view(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """uint8 (..., C, H, W) -> uint8 (..., channels, size, size): resize shorter side, centre crop."""
        from torchvision.transforms.v2 import functional as F

        size = size or self.image_size
        x = match_channels(x, self.channels)
        h, w = x.shape[-2:]
        side = round(size / self.crop_pct)
        if (h, w) == (size, size) and side == size:
            return x
        if min(h, w) != side:
            x = F.resize(x, [side], interpolation=_mode(self.interpolation), antialias=True)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.center_crop(x, [size, size])
        return x

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x_uint8.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x_uint8.device).view(-1, 1, 1)
        return (x_uint8.float() / 255.0 - mean) / std

    def normalize_np(self, x_uint8: np.ndarray) -> np.ndarray:
        return normalize(x_uint8, self.mean, self.std)


def normalize(x_uint8: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel."""
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((np.asarray(x_uint8, dtype=np.float32) / 255.0 - mean) / std).astype(np.float32)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey to RGB by repetition, RGB to grey by luminance (ITU-R 601, as Pillow's convert("L"))."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    if c == 3 and channels == 1:
        from torchvision.transforms.v2 import functional as F

        return F.rgb_to_grayscale(x)
    raise EdgeKDError(f"cannot convert {c}-channel images to {channels} channels", "use grey or RGB images")


def _mode(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def with_overrides(pre: Preprocess, **changes) -> Preprocess:
    """``pre`` with the non-None ``changes`` applied (validated again)."""
    return replace(pre, **{k: v for k, v in changes.items() if v is not None})


# ---------------------------------------------------------------------------------------------
# Decoding files: Pillow opens every format and mode; JPEGs are decoded at a reduced scale
# (DCT-domain, ``draft``) when the crop still has at least the output's pixels, which makes
# phone photos several times cheaper to read without changing what the model sees at its size.


def pil_mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def _to_pil(im, channels: int):
    """Any Pillow mode -> "L" or "RGB": alpha over white, palettes expanded, 16-bit scaled to 8."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels over white, not over whatever colour the file stored under alpha 0.
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    elif im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return im.convert(pil_mode(channels))


# Files are cropped and resized as Pillow images (torchvision.transforms.v2 dispatches to Pillow's
# antialiased resampling): no torch thread pool is touched per image, which in the training process
# (--workers 0) would cost the model's next step more than the resize itself.


def decode_eval(path: str, pre: Preprocess, size: int) -> torch.Tensor:
    """One file -> uint8 (C, size, size) by the evaluation rule."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    side = round(size / pre.crop_pct)
    with Image.open(path) as im:
        w, h = im.size
        f = side / max(1, min(w, h))
        if f < 1 and im.format == "JPEG":
            im.draft(pil_mode(pre.channels), (math.ceil(w * f), math.ceil(h * f)))
        img = _to_pil(im, pre.channels)
    if min(img.size) != side:
        img = F.resize(img, [side], interpolation=_mode(pre.interpolation), antialias=True)
    return F.pil_to_tensor(F.center_crop(img, [size, size]))


_RRC = {}


def decode_train(path: str, pre: Preprocess, sample_seed: int, teacher: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One file -> (student view, teacher view or None): one random crop at native resolution, resized for each.

    Every random choice comes from ``sample_seed`` (derived from seed, epoch and sample index), so a
    sample looks the same whichever worker reads it and however many workers there are.
    """
    from PIL import Image
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    sizes = [pre.image_size] + ([pre.teacher_size] if teacher and pre.teacher_size != pre.image_size else [])
    with Image.open(path) as im:
        w, h = im.size
        # The generator's own seeding (microseconds) rather than torch.manual_seed (a millisecond);
        # its state is put back so a caller in the main process keeps its random stream.
        gen = torch.default_generator
        saved = gen.get_state()
        try:
            gen.manual_seed(sample_seed)
            if pre.train_crop == "random-resized-crop":
                key = pre.crop_scale
                if key not in _RRC:
                    _RRC[key] = v2.RandomResizedCrop(pre.image_size, scale=pre.crop_scale, antialias=True)
                box = _RRC[key].make_params([im])
            else:
                box = None
            flip = pre.flip and bool(torch.rand(()) < 0.5)
        finally:
            gen.set_state(saved)
        if box is None:  # no random crop: the evaluation view (shorter side, centre crop)
            side = round(max(sizes) / pre.crop_pct)
            f = side / max(1, min(w, h))
        else:
            f = max(max(sizes) / box["width"], max(sizes) / box["height"])
        if f < 1 and im.format == "JPEG":
            im.draft(pil_mode(pre.channels), (math.ceil(w * f), math.ceil(h * f)))
        img = _to_pil(im, pre.channels)
    mode = _mode(pre.interpolation)
    if box is None:
        views = []
        for s in sizes:
            side = round(s / pre.crop_pct)
            v = F.resize(img, [side], interpolation=mode, antialias=True) if min(img.size) != side else img
            views.append(F.center_crop(v, [s, s]))
    else:
        sy, sx = img.size[1] / h, img.size[0] / w  # a JPEG decoded at a reduced scale
        top, left = round(box["top"] * sy), round(box["left"] * sx)
        bh = max(1, min(img.size[1] - top, round(box["height"] * sy)))
        bw = max(1, min(img.size[0] - left, round(box["width"] * sx)))
        views = [F.resized_crop(img, top, left, bh, bw, [s, s], interpolation=mode, antialias=True) for s in sizes]
    if flip:
        views = [F.horizontal_flip(v) for v in views]
    views = [F.pil_to_tensor(v) for v in views]
    return views[0], (views[1] if len(views) > 1 else None)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (splitmix64 of the three numbers)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def parse_floats(text, what: str) -> tuple[float, ...] | None:
    """``"0.485,0.456,0.406"`` (or a list of numbers) -> a tuple; None stays None."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return tuple(float(v) for v in text)
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise EdgeKDError(f"{what} must be comma-separated numbers, got {text!r}", f"e.g. {what} 0.485,0.456,0.406") from None


# ---------------------------------------------------------------------------------------------
# A teacher's own preprocessing: what it was trained to see


def teacher_preprocess(ref: str) -> dict | None:
    """mean, std, image size, crop fraction and interpolation a teacher expects, where it says so.

    ``torchvision:NAME`` from its weights' ``transforms()`` (metadata only, nothing is downloaded),
    ``timm:NAME`` from its ``pretrained_cfg``, an edgekd ``.safetensors`` from the preprocessing
    recorded when it was trained; None for anything else (the data's own statistics are used).
    """
    try:
        import edgekd.models as models

        own = getattr(models, "teacher_preprocess", None)  # a model registry that knows more wins
        if own is not None and own is not teacher_preprocess:
            found = own(ref)
            if found:
                return found
    except ImportError:
        pass
    name = ref.split(":", 1)[1] if ":" in ref else ""
    try:
        if ref.startswith("torchvision:"):
            import torchvision

            t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
            crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
            return {"mean": tuple(t.mean), "std": tuple(t.std), "image_size": crop, "crop_pct": crop / resize,
                    "interpolation": t.interpolation.value, "source": f"torchvision {name} weights"}
        if ref.startswith("timm:"):
            import timm

            cfg = timm.models.get_pretrained_cfg(name)
            cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
            if not cfg.get("mean"):
                return None
            return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "image_size": int(cfg["input_size"][-1]),
                    "crop_pct": float(cfg.get("crop_pct") or 1.0), "interpolation": cfg.get("interpolation") or "bilinear",
                    "source": f"timm {name} pretrained_cfg"}
        if ref.endswith(".safetensors"):
            import json

            from safetensors import safe_open

            with safe_open(ref, framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("edgekd.meta", "{}"))
            pre = meta.get("preprocess")
            if not pre:
                return None
            return {"mean": tuple(pre["mean"]), "std": tuple(pre["std"]), "image_size": int(pre["image_size"]),
                    "crop_pct": float(pre.get("crop_pct", 1.0)), "interpolation": pre.get("interpolation", "bilinear"),
                    "source": "recorded when it was trained"}
    except Exception:  # noqa: BLE001 - unknown or unreadable: the teacher loader reports that properly
        return None
    return None
