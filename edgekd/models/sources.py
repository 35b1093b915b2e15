"""Models the user brings: ``torchvision:NAME``, ``timm:NAME``, ``path/to/file.py:factory``, edgekd
``.safetensors`` and ``.onnx``, with their weights read safely (safetensors or ``weights_only=True``).

``edgekd export --model`` and ``edgekd distill --teacher/--student`` both go through here. A user's
Python file is imported only by :func:`import_factory`, and only because the user named it.
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.errors import EdgeKDError, first_line
from edgekd.models.adapt import ChannelRepeat  # noqa: F401  (imported from here by the teacher loader)
from edgekd.models.base import FILE_SCHEME, SCHEMES, ModelSpec, count_params

# ---------------------------------------------------------------------------------------------
# Weights


def read_state_dict(path: str | Path, what: str = "weights") -> dict:
    """A state dict from .safetensors, or .pt/.pth read with ``torch.load(weights_only=True)``; a
    checkpoint dict holding ``state_dict``/``model``/``model_state_dict`` is unwrapped, and a
    ``module.`` prefix (DataParallel) removed."""
    from edgekd.fsutil import what_file_is

    path = Path(path)
    if path.is_dir():
        raise EdgeKDError(f"{what} {path} is a folder, not a weights file", "pass the .pth/.pt/.safetensors file in it")
    if not path.is_file():
        raise EdgeKDError(f"{what} file {path} does not exist", f"check the {what} path")
    kind = what_file_is(path)
    if path.suffix != ".safetensors" and kind not in (None, "a ZIP archive", "a Python pickle"):
        raise EdgeKDError(f"{what} {path.name} is {kind}, not PyTorch weights",
                          "pass the file written by torch.save(model.state_dict(), path), or a .safetensors")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only: a checkpoint from the internet must not be able to run code on load.
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, bad header, pickle with code objects...
        if "Weights only load failed" in str(err):
            raise EdgeKDError(f"refused {what} {path.name}: it is a pickle that would run code or build objects "
                              "(torch.load(weights_only=True) rejected it; nothing in it ran)",
                              "re-save only the tensors: torch.save(model.state_dict(), path) or safetensors") from None
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)[:160]
        raise EdgeKDError(f"cannot read {what} {path.name}: {first}",
                          "the file is truncated, not a state dict, or a pickle that would run code; re-save it "
                          "with torch.save(model.state_dict()) or safetensors") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise EdgeKDError(f"{path.name} holds no state dict of tensors", "save model.state_dict() instead")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, state: dict | None = None) -> nn.Module:
    """Load a state dict strictly, naming the first tensor that does not fit."""
    path = Path(path)
    state = read_state_dict(path) if state is None else state
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if mismatched:
        k = mismatched[0]
        raise EdgeKDError(f"weights {path.name} do not match the model: {len(mismatched)} tensors have other shapes "
                          f"(first: {k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model)",
                          "pass the architecture (and --num-classes) the weights were saved from")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise EdgeKDError(f"weights {path.name} do not match the model: {len(missing)} missing and "
                          f"{len(unexpected)} unexpected tensors (first: {example})",
                          "pass the architecture the weights were saved from")
    return model


def classifier_key(model: nn.Module) -> str | None:
    """State-dict key of the classifier weight: the last Linear (or, failing that, the last Conv2d)."""
    last = {nn.Linear: None, nn.Conv2d: None}
    for name, module in model.named_modules():
        for kind in last:
            if isinstance(module, kind):
                last[kind] = name
    name = last[nn.Linear] or last[nn.Conv2d]
    return None if name is None else f"{name}.weight"


def stem_key(model: nn.Module) -> str | None:
    from edgekd.models.adapt import first_conv

    try:
        return first_conv(model)[0] + ".weight"
    except EdgeKDError:
        return None


# ---------------------------------------------------------------------------------------------
# torchvision:NAME


def check_source_name(text: str) -> None:
    """An unknown ``torchvision:NAME`` or ``timm:NAME`` is named with the closest known names, before anything
    else (weights, data) is asked for."""
    scheme, _, name = str(text).partition(":")
    if scheme == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            from edgekd.registry import suggest

            raise EdgeKDError(f"unknown torchvision model {name!r}", suggest(name, known, "torchvision model"))
    elif scheme == "timm":
        from edgekd.models.timm_models import check_timm_name

        check_timm_name(name)


def torchvision_model(name: str, num_classes: int | None = None) -> nn.Module:
    """A torchvision classifier with random weights (nothing is downloaded; weights come from a file)."""
    import torchvision

    check_source_name(f"torchvision:{name}")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    return torchvision.models.get_model(name, weights=None, **kwargs)


class ResizedInput(nn.Module):
    """A teacher that takes another image size than the student: each batch is resized (bilinear) to
    ``size`` before it, so both see the same image, each at its own resolution (``--teacher-image-size``)."""

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net, self.size = net, int(size)

    def named_root(self) -> nn.Module:
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                                antialias=x.shape[-1] > self.size)
        return self.net(x)


def torchvision_family(name: str):
    """``torchvision:NAME`` as a model factory (width 1; the architecture exactly as torchvision builds it).

    ``weights_in_channels``: the channels the weights' stem takes; for grey data and RGB weights the
    grey channel is repeated (:class:`ChannelRepeat`), otherwise the stem is rebuilt for the data.
    """
    torchvision_model  # noqa: B018 - name checked at build time, with "did you mean"

    def factory(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                image_size: int | None = None, weights_in_channels: int | None = None) -> nn.Module:
        if width != 1 or depth != 1:
            raise EdgeKDError(f"torchvision:{name} has no width or depth knob here",
                              "use a student family (edgekd distill --student mobilenet_v3_small ...) to scale it")
        model = torchvision_model(name, num_classes)
        stem_in = weights_in_channels or in_channels
        if stem_in != 3:
            from edgekd.models.adapt import adapt_stem

            adapt_stem(model, stem_in)
        return ChannelRepeat(model, stem_in) if stem_in != in_channels else model

    factory.search_depths, factory.search_widths = (1,), (1.0,)
    return factory


SCHEMES.add("torchvision", torchvision_family)


# ---------------------------------------------------------------------------------------------
# path/to/file.py:factory


def import_factory(spec: str):
    """The callable ``factory`` of ``path/to/file.py:factory``, importing that file (the user named it)."""
    path_text, _, factory = spec.rpartition(":")
    path = Path(path_text)
    if not factory or not path_text.endswith(".py"):
        raise EdgeKDError(f"model {spec!r} is not FILE.py:FACTORY", "pass e.g. models/net.py:build")
    if not path.is_file():
        raise EdgeKDError(f"model file {path} does not exist", "check the FILE.py:FACTORY path")
    # Importing the user's own model file is how a Python-defined model is obtained; it is their code.
    module_spec = importlib.util.spec_from_file_location(f"edgekd_user_model_{abs(hash(path.resolve()))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except (SystemExit, Exception) as err:  # noqa: BLE001 - the user's code: its failure (or exit) is one line
        raise EdgeKDError(f"importing {path} failed: {_user_code_failure(err)}", "fix the model file") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise EdgeKDError(f"{path} defines no callable {factory!r}", "name a function that returns an nn.Module")
    return fn


def call_factory(fn, spec: str, **offered) -> nn.Module:
    """Call a user factory with the keyword arguments it declares among ``offered`` (width, num_classes...)."""
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if v is not None and (takes_all or k in params)}
    try:
        net = fn(**kwargs)
    except (SystemExit, Exception) as err:  # noqa: BLE001 - the user's code: its failure (or exit) is one line
        raise EdgeKDError(f"{spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: "
                          f"{_user_code_failure(err)}", "fix the factory") from None
    if not isinstance(net, nn.Module):
        raise EdgeKDError(f"{spec} returned {type(net).__name__}, not a torch.nn.Module", "the factory must return the model")
    return net


def _user_code_failure(err: BaseException) -> str:
    if isinstance(err, SystemExit):
        return f"it called sys.exit({err.code!r})"
    return first_line(err, 160, with_type=True)


def factory_family(spec: str):
    """``file.py:factory`` as a student family: the factory is called with ``width=`` (and num_classes,
    in_channels, image_size, depth when it takes them)."""
    fn = import_factory(spec)
    params = inspect.signature(fn).parameters
    if "width" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise EdgeKDError(f"{spec} takes no width= argument", "give the factory a width multiplier: def build(width=1.0, ...)")

    def factory(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                image_size: int | None = None, **kw) -> nn.Module:
        return call_factory(fn, spec, width=width, num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size, depth=depth if depth != 1 else None, **kw)

    return factory


SCHEMES.add(FILE_SCHEME, factory_family)  # "path/to/file.py:factory", whole (edgekd.models.base.resolve_factory)


# ---------------------------------------------------------------------------------------------
# model.onnx: a teacher that only exists as ONNX


class OnnxModel(nn.Module):
    """An ONNX classifier run by ONNX Runtime on the CPU, as a (gradient-free) module returning logits.

    It has no modules inside, so feature losses cannot hook it; its logits are cached like any
    frozen teacher's when the inputs are not augmented.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        import onnxruntime as ort

        self.path = str(path)
        try:
            self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - InvalidProtobuf, NoSuchFile, Fail...
            raise EdgeKDError(f"cannot load the ONNX teacher {path}: {str(err).splitlines()[0][:160]}",
                              "pass a valid .onnx classifier") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        out = self.session.get_outputs()[0].shape
        self.num_classes = out[-1] if isinstance(out[-1], int) else None
        self.static_batch = isinstance(self.input_shape[0], int) and self.input_shape[0] > 0
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    @property
    def in_channels(self) -> int | None:
        c = self.input_shape[1] if len(self.input_shape) == 4 else None
        return c if isinstance(c, int) else None

    @property
    def image_size(self) -> tuple[int, int] | None:
        hw = self.input_shape[2:] if len(self.input_shape) == 4 else []
        return tuple(hw) if len(hw) == 2 and all(isinstance(d, int) for d in hw) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().contiguous().cpu().numpy()
        if self.static_batch:  # exported with a fixed batch: run it in chunks of that size
            b = self.input_shape[0]
            outs = []
            for i in range(0, len(arr), b):
                chunk = arr[i:i + b]
                pad = b - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
                outs.append(self.session.run(None, {self.input_name: chunk})[0][:b - pad])
            logits = np.concatenate(outs)
        else:
            logits = self.session.run(None, {self.input_name: arr})[0]
        return torch.from_numpy(np.asarray(logits, np.float32)).to(x.device)


# ---------------------------------------------------------------------------------------------
# One entry point: any model source, with its weights


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ModelSpec | None           # None: not rebuildable from a spec (ONNX)
    source: str
    info: dict = field(default_factory=dict)


def is_source(text: str) -> bool:
    """Whether ``text`` names a model source (vs. an edgekd family name)."""
    return ":" in text or text.endswith((".safetensors", ".onnx"))


def load_source_model(source: str, *, weights: str | Path | None = None, num_classes: int | None = None,
                      in_channels: int | None = None, what: str = "--teacher") -> LoadedModel:
    """Build ``source`` and load ``weights`` into it.

    ``num_classes``: the classes the data has; for torchvision/timm the weights' own classifier shape
    decides (so a mismatch can be named), the data's when there are no weights. ``in_channels``: the
    data's channels; an RGB network on grey data gets the channel repeated.
    """
    text = str(source)
    if text.endswith(".onnx"):
        if weights is not None:
            raise EdgeKDError(f"{what} {text} is ONNX, which carries its weights", "drop --teacher-weights")
        if not Path(text).is_file():
            raise EdgeKDError(f"{what} {text} does not exist", "check the path")
        model = OnnxModel(text)
        return LoadedModel(model, None, text, {"format": "onnx", "num_classes": model.num_classes,
                                                "in_channels": model.in_channels, "image_size": model.image_size})
    if text.endswith(".safetensors"):
        from edgekd.models.checkpoint import load_model

        if not Path(text).is_file():
            raise EdgeKDError(f"{what} {text} does not exist", "pass a .safetensors file written by edgekd")
        model, spec, meta = load_model(text)
        return LoadedModel(model, spec, text, {"format": "edgekd", "meta": meta})
    if ":" not in text:
        raise EdgeKDError(f"{what} {text!r} is not a model source",
                          "pass torchvision:NAME, timm:NAME, path/to/file.py:factory, an edgekd .safetensors or a .onnx")
    state = read_state_dict(weights, "--teacher-weights" if what == "--teacher" else "weights") if weights else None
    if ".py:" in text:
        model = call_factory(import_factory(text), text, num_classes=num_classes, in_channels=in_channels)
        if state is not None:
            load_weights(model, weights, state)
        return LoadedModel(model, None, text, {"format": "factory"})
    scheme, _, name = text.partition(":")
    factory = SCHEMES.get(scheme)(name)
    probe = factory(num_classes=1000 if scheme == "torchvision" else (num_classes or 1000), in_channels=3)
    kw = {}
    classes = num_classes or 1000
    if state is not None:
        key = classifier_key(probe)
        if key in state:
            classes = int(state[key].shape[0])
        skey = stem_key(probe)
        if skey in state and state[skey].dim() == 4:
            kw["weights_in_channels"] = int(state[skey].shape[1])
    spec = ModelSpec(text, classes, in_channels or kw.get("weights_in_channels", 3), extra=kw)
    model = spec.build()
    if state is not None:
        load_weights(model.named_root() if isinstance(model, ChannelRepeat) else model, weights, state)
    return LoadedModel(model, spec, text, {"format": scheme, "params": count_params(model)})
