"""What code path each executed kernel runs on, and the amounts the latency model charges per kernel.

The coefficient class of a kernel (its op class, or the sub-class of the runtime code path it runs on),
the compute groups a few device figures scale together, the FLOPs a blocked layout really executes, and
the per-kernel amounts beyond a class's rates (an extra epilogue pass, padded border columns, filter
sets, wide kernels). Pure functions of a ``Kernel``; ``latency`` turns them into a design-matrix row.
"""

from __future__ import annotations

import math

from edgekd.hardware.graph import Kernel, op_rule
from edgekd.hardware.libraries import winograd_work
from edgekd.hardware.targets import OP_CLASSES

# Kernels that a runtime's executed graph shows to run on a different code path than the rest of their
# class, each with its own coefficients (ONNX Runtime on x86, measured with its profiler on this machine:
# an NCHWc conv reading a plain NCHW input (stems, narrow layers) costs ~1.4x per FLOP of a blocked one,
# and several times more for 1x1; convs left in NCHW run im2col + GEMM; the layout reorders around NCHWc
# regions are pure memory traffic). Sub-class -> the class whose datasheet figures it starts from, and
# whose coefficients it keeps when no measurement exercises it (graphs costed from ONNX alone have none).
# ONNX Runtime's plain-layout AveragePool (channels that do not suit NCHWc) is its generic pooling loop:
# ~5.5 ns per output on this machine against ~1 ns for a plain MaxPool and ~0.3 ns for a blocked one.
# Blocked 1x1 convs run ONNX Runtime's pointwise kernel (a GEMM over channel blocks), not the NxN one.
# Shape-only ops (Reshape, Flatten, ...) alias their input buffer: a call, no copy, unlike Concat/Split/Transpose.
# Grouped convs with several channels per group (RegNet, ResNeXt) run the dense kernel once per group, many
# FLOPs per output where a depthwise conv has a few: their own coefficients, scaled with depthwise on devices.
# Dense 3x3 convs that a runtime runs as Winograd (ncnn on ARM) do a third to a fifth of the multiplies, plus
# transforms whose cost the FLOPs do not show: their own coefficients, charged per multiply executed.
SUBCLASSES = {"conv_nchw_input": "conv", "conv_fallback": "conv", "reorder": "data", "avgpool_nchw": "pool",
              "conv_pointwise": "conv", "view": "data", "dwconv_fallback": "dwconv", "conv_grouped": "dwconv",
              "conv_winograd": "conv"}
KERNEL_CLASSES = OP_CLASSES + tuple(SUBCLASSES)
# A sub-class whose datasheet prior is its own efficiency figure in the profile, not its parent's
# (see targets.EFFICIENCY_CLASSES): a 1x1 conv on a GPU is memory-bound where a dense conv is not.
OWN_EFFICIENCY = {"conv_pointwise": "pointwise"}
# The groups of kernel classes whose compute rate a few device measurements scale together (fit_scaled):
# a code path and the sub-classes that only differ from it in layout. Each group is scaled only by the
# measurements that exercise it, so a depthwise network's cost never follows dense convs' fitted rate.
COMPUTE_GROUPS = {"conv": ("conv", "conv_nchw_input", "conv_fallback", "conv_winograd"), "pointwise": ("conv_pointwise",),
                  "dwconv": ("dwconv", "dwconv_fallback", "conv_grouped"), "gemm": ("gemm",),
                  "pool": ("pool", "avgpool_nchw"), "elementwise": ("elementwise",), "data": ("data", "reorder", "view")}


def kernel_class(k: Kernel) -> str:
    """The coefficient class of a kernel: its op class, or the sub-class of the code path it runs on."""
    if k.op_type in ("ReorderInput", "ReorderOutput"):
        return "reorder"
    if op_rule(k.op_type).kind == "alias":
        return "view"
    layout = k.geometry.get("layout") if k.geometry else None
    if k.op_class == "conv" and k.geometry and k.geometry.get("winograd"):
        return "conv_winograd"
    if k.op_class == "dwconv" and k.geometry and k.geometry.get("cin", 0) > k.geometry.get("groups", 1):
        return "conv_grouped"
    if k.op_class == "dwconv" and layout == "nchw":
        return "dwconv_fallback"
    if k.op_class == "conv" and layout == "nchw":
        return "conv_fallback"
    if k.op_class == "conv" and layout == "nchwc" and k.geometry.get("input_layout") == "nchw":
        return "conv_nchw_input"
    if k.op_type == "AveragePool" and layout == "nchw":
        return "avgpool_nchw"
    if k.op_class == "conv" and layout in ("nchwc", None) and list(k.geometry.get("kernel") or []) == [1, 1]:
        return "conv_pointwise"
    return k.op_class


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def work_flops(k: Kernel, channel_multiple: int = 1) -> float:
    """FLOPs the kernel actually executes once channels are padded to the runtime's vector block.

    Blocked layouts (ONNX Runtime NCHWc and OpenVINO nChw16c with AVX-512, TensorRT Tensor Core tiles,
    XNNPACK's packed output channels) compute whole blocks, so a 12-channel conv costs like a 16-channel
    one. Input channels of a dense conv are padded too, except for narrow image inputs (1-3 channels)
    that runtimes read in plain layout. Kernels costed from the graph the runtime executed
    (``executed_graph_cost``) already have padded shapes and are taken as they are. A conv the runtime
    runs as Winograd executes ``winograd_work`` multiplies per FLOP counted.
    """
    m = channel_multiple
    g = k.geometry
    winograd = winograd_work(g) if g and g.get("winograd") else 1.0
    if m <= 1 or not g or g.get("padded") or k.op_class not in ("conv", "dwconv"):
        return float(k.flops) * winograd
    cout = g.get("cout") or 0
    if not cout:
        return float(k.flops) * winograd
    scale = _round_up(cout, m) / cout
    if k.op_class == "conv":
        cin_g = max(1, g.get("cin", 0) // max(1, g.get("groups", 1)))
        if cin_g >= m // 2:
            scale *= _round_up(cin_g, m) / cin_g
    return float(k.flops) * scale * winograd


# ONNX Runtime's conv and GEMM kernels apply ReLU while the output is in registers; these fused activations
# run as a separate pass over each output block (measured here on a 32x112x112 depthwise conv:
# none 0.396 ms, ReLU 0.398, Clip 0.437, HardSigmoid 0.450, LeakyRelu 0.456).
EXTRA_PASS_ACTIVATIONS = frozenset({"Clip", "HardSigmoid", "LeakyRelu", "Sigmoid", "Tanh", "HardSwish", "Elu",
                                    "Softplus", "Gelu", "QuickGelu"})


def epilogue_mb(k: Kernel) -> float:
    """Output MB of a conv/GEMM kernel whose fused activation is an extra pass (0 otherwise)."""
    if k.op_class not in ("conv", "dwconv", "gemm") or not EXTRA_PASS_ACTIVATIONS.intersection(k.ops[1:]):
        return 0.0
    return k.output_bytes / 1e6


FILTER_SET_BLOCKS = 4


def _blocks_per_pass(g: dict) -> int:
    """Output-channel blocks a blocked conv computes per pass over its input: up to FILTER_SET_BLOCKS."""
    return min(FILTER_SET_BLOCKS, max(1, -(-int(g["cout"]) // int(g.get("block") or 16))))


def border_mflops(k: Kernel) -> float:
    """MFLOPs of a blocked conv's output columns whose window reaches into the left/right zero padding.

    ONNX Runtime's NCHWc kernels split each output row into left-padded, interior and right-padded
    columns and run the padded ones through a bounds-checked path at roughly half the rate (measured
    here, 16 channels, 7x7 kernel: 58 GFLOP/s on a 7x7 map, 76 on 12x12, 100 on 56x56; 3x3 kernels
    barely notice). That path, too, shares each load across the filter set (up to four output blocks),
    so a dense conv's border MFLOPs are divided by its blocks per pass: 64 channels on a 7x7 map lose
    far less (97 GFLOP/s) than 16. Only executed-graph kernels carry the geometry; others contribute 0.
    """
    g = k.geometry
    if k.op_class not in ("conv", "dwconv") or not g or g.get("layout") != "nchwc" or not g.get("out_width"):
        return 0.0
    pads, strides = g.get("pads") or [], g.get("strides") or []
    if len(pads) < 4:
        return 0.0
    stride_w = strides[1] if len(strides) > 1 else 1
    columns = -(-pads[1] // stride_w) + -(-pads[3] // stride_w)  # left and right padded output columns
    share = min(1.0, columns / g["out_width"])
    if k.op_class == "conv" and g.get("cout"):  # the padded path, too, amortises its loads over the filter set
        share /= _blocks_per_pass(g)
    return k.flops / 1e6 * share


def filter_set_mflops(k: Kernel) -> float:
    """A blocked dense conv's MFLOPs divided by how many output-channel blocks each pass computes.

    ONNX Runtime's NCHWc conv kernels compute up to four 8/16-channel output blocks per pass over the
    input, so each input load feeds up to four blocks; a 16-channel conv gets one (measured here, 7x7
    kernel on 56x56: 100 GFLOP/s at 16 channels, 112 at 64). Zero for other kernels.
    """
    g = k.geometry
    if k.op_class != "conv" or not g or g.get("layout") != "nchwc" or not g.get("cout"):
        return 0.0
    return k.flops / 1e6 / _blocks_per_pass(g)


def wide_kernel_mflops(k: Kernel) -> float:
    """A blocked dense conv's MFLOPs weighted by how far its kernel outgrows 3x3: MFLOPs x ln(kh*kw / 9).

    ONNX Runtime's NCHWc conv kernel re-reads the weights of one filter set and input-channel block
    (up to 4 x 16 x 16 x kh x kw floats) for every few output pixels of a row: at most 37 KB at 3x3, about
    a core's L1 data cache (32-48 KB), but 100-200 KB at 5x5 and 7x7, read from L2. So larger kernels run
    slower per FLOP than 3x3 ones beyond what their padded border columns explain (border_mflops); the
    rate is fitted per machine. Zero for 1x1, 3x3 and smaller kernels, convs reading a plain NCHW input
    and every kernel without executed geometry.
    """
    g = k.geometry
    if kernel_class(k) != "conv" or not g or g.get("layout") != "nchwc":
        return 0.0
    area = math.prod(int(d) for d in g.get("kernel") or [1])
    return k.flops / 1e6 * math.log(area / 9) if area > 9 else 0.0
