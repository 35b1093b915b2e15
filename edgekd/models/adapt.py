"""Fitting an ImageNet-shaped architecture to the data: input channels, small inputs, transferred weights.

Small inputs. ImageNet networks divide their input by 32 (a stride-2 stem, then four stride-2 stages),
so a 32-pixel image reaches the last stage at 1x1 and a 28-pixel one collapses early. Below
:data:`SMALL_INPUT` pixels the families built here use a stride-1 stem (and ResNet and ShuffleNet drop
their stem max-pool), the usual CIFAR adaptation: the total stride becomes 16 (8 for ResNet), so a
32-pixel image reaches the last stage at 2x2 (4x4). The weights keep their shapes, so ImageNet
weights still transfer.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import EdgeKDError

SMALL_INPUT = 64


def is_small(image_size: int | None) -> bool:
    return image_size is not None and int(image_size) < SMALL_INPUT


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The stem: the first Conv2d in definition order (the one that sees the image)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise EdgeKDError(f"{type(model).__name__} has no Conv2d stem", "use a convolutional architecture")


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def adapt_stem(model: nn.Module, in_channels: int, image_size: int | None = None) -> nn.Module:
    """Give ``model``'s stem ``in_channels`` inputs, and stride 1 for small inputs (see module docstring).

    A grey stem is a fresh conv of the same shape otherwise; when weights are loaded later
    (:func:`transfer_weights`) an RGB stem's kernels are summed into it, as timm's ``adapt_input_conv`` does.
    """
    name, conv = first_conv(model)
    stride = (1, 1) if is_small(image_size) else conv.stride
    if conv.in_channels == in_channels and tuple(conv.stride) == tuple(stride):
        return model
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride, conv.padding, conv.dilation,
                    conv.groups if conv.groups == 1 else in_channels, conv.bias is not None, conv.padding_mode)
    if conv.in_channels == in_channels:
        new.load_state_dict(conv.state_dict())
    _set_module(model, name, new)
    return model


def drop_stem_pool(model: nn.Module, attr: str, image_size: int | None) -> nn.Module:
    """Replace the stem max-pool ``attr`` by identity for small inputs."""
    if is_small(image_size):
        setattr(model, attr, nn.Identity())
    return model


def make_divisible(value: float, divisor: int = 8, minimum: int | None = None) -> int:
    """Round channels to a multiple of ``divisor``, never more than 10% below ``value`` (MobileNet's rule)."""
    minimum = minimum or divisor
    out = max(minimum, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return out


def adapt_input_kernel(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB stem kernel for ``in_channels`` inputs: summed for grey (the response to a grey image
    stays the same), tiled and rescaled otherwise."""
    have = weight.shape[1]
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_channels // have)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (have / in_channels)


def transfer_weights(model: nn.Module, state: dict, *, source: str = "weights") -> tuple[int, int, list[str]]:
    """Load every tensor of ``state`` whose name and shape fit ``model`` (the stem kernel is adapted to
    the input channels); the rest of the model keeps its initialisation. Returns (loaded, total, skipped)."""
    own = model.state_dict()
    stem_key = first_conv(model)[0] + ".weight"
    fitting, skipped = {}, []
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if key == stem_key and value.dim() == 4 and value.shape[0] == target.shape[0] \
                and value.shape[2:] == target.shape[2:] and value.shape[1] != target.shape[1]:
            value = adapt_input_kernel(value, target.shape[1])
        if tuple(value.shape) == tuple(target.shape):
            fitting[key] = value.to(target.dtype)
        else:
            skipped.append(key)
    if not fitting:
        raise EdgeKDError(f"no tensor of {source} fits this student (names or shapes differ everywhere)",
                          "pass weights of the same architecture, e.g. the torchvision checkpoint of this family")
    model.load_state_dict(fitting, strict=False)
    return len(fitting), len(own), skipped


def check_spec_fits(spec, state: dict, where) -> None:
    """Refuse a model spec that does not describe the tensors in ``state``, before anything is allocated.

    The spec comes from a file's header, which anyone can edit: a negative class count, an argument the
    architecture does not take, or a width that would need terabytes must be a one-line error. The graph
    is built on the meta device (shapes only, no memory) and its tensors compared with the file's.
    """
    import math

    for name in ("num_classes", "in_channels"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EdgeKDError(f"{where}: its model spec asks for {name} {value!r}",
                              "the checkpoint was edited or is not edgekd's; save it again with edgekd")
    for name in ("width", "depth"):
        value = getattr(spec, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise EdgeKDError(f"{where}: its model spec asks for {name} {value!r}",
                              "the checkpoint was edited or is not edgekd's; save it again with edgekd")
    if not isinstance(spec.extra, dict) or not (spec.image_size is None or isinstance(spec.image_size, int)):
        raise EdgeKDError(f"{where}: its model spec is malformed", "save the checkpoint again with edgekd")
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in spec.build().state_dict().items()}
    except EdgeKDError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError, RecursionError, AttributeError) as err:
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)[:140]
        raise EdgeKDError(f"{where}: its model spec ({spec.arch}, width {spec.width}) does not build: {first}",
                          "the checkpoint was edited or is not edgekd's; save it again with edgekd") from None
    wrong = [k for k in shapes if k not in state or tuple(state[k].shape) != shapes[k]]
    wrong += [k for k in state if k not in shapes]
    if wrong:
        k = wrong[0]
        have = tuple(state[k].shape) if k in state else "missing"
        want = shapes.get(k, "none")
        raise EdgeKDError(f"{where} does not match architecture {spec.arch} (width {spec.width}, depth {spec.depth}): "
                          f"{len(wrong)} tensors differ (first {k}: {have} in the file, {want} in the spec)",
                          "pass the architecture and width the weights were trained with")


class ChannelRepeat(nn.Module):
    """A grey image fed to an RGB network: the channel repeated (the usual way to run ImageNet models on grey data)."""

    def __init__(self, net: nn.Module, channels: int = 3):
        super().__init__()
        self.net, self.channels = net, channels

    def named_root(self) -> nn.Module:  # feature pairs name the wrapped network's modules
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x)
