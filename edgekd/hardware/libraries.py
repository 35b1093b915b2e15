"""Kernel libraries that published latency tables measure but edgekd does not deploy to, and the
algorithms a runtime runs some convs with (read by the latency model's graph costing)."""

from __future__ import annotations

import math

from edgekd.runtimes import FusionRules

# Kernel libraries that published latency tables measure directly but edgekd does not deploy to (no
# runner, no export format), with their fusions, so that those tables can calibrate a device. A runtime
# edgekd deploys to is a descriptor in edgekd.runtimes, which owns its fusions.
MEASURED_LIBRARIES: dict[str, FusionRules] = {
    # XNNPACK's own end-to-end benchmarks: the kernels ExecuTorch and LiteRT delegate to (BN folded, ReLU
    # and ReLU6 as the output clamp, other activations separate operators).
    "xnnpack": FusionRules(fold=frozenset({"BatchNormalization"}), epilogue=frozenset({"Relu", "Clip"}), max_epilogue=1),
    # ncnn: ncnnoptimize folds BN into (depthwise) convolutions and inner products and fuses the activation
    # after them (docs/how-to-use-and-FAQ/use-ncnnoptimize-to-optimize-model.md; the fused activation_type
    # covers ReLU, LeakyReLU, Clip, Sigmoid, Mish and HardSwish in src/layer/fused_activation.h).
    # Its ARM convolution runs dense 3x3 stride-1 convs as Winograd at FP32/FP16 (winograd_tile); at INT8 only
    # on cores without dot-product instructions, which a profile does not say: INT8 convs are costed direct.
    "ncnn": FusionRules(fold=frozenset({"BatchNormalization"}),
                        epilogue=frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "Mish", "HardSwish"}), max_epilogue=1,
                        winograd=frozenset({"fp32", "fp16"})),
}


def winograd_tile(geometry: dict) -> int:
    """The output tile m of the Winograd F(m x m, 3 x 3) a dense 3x3 stride-1 conv runs as (0: not Winograd).

    ncnn's rule (src/layer/arm/convolution_arm.cpp, create_pipeline, unchanged from 2023 to 2026): either
    side of 8 channels or more; F(6,3) while both sides have at most 128 channels, F(4,3) beyond when both
    have at least 8, F(2,3) otherwise. F(m,3) multiplies (m+2)^2 times per output tile and channel pair
    where the direct conv multiplies 9 m^2 times (``winograd_work``).
    """
    g = geometry or {}
    cin, cout = int(g.get("cin", 0)), int(g.get("cout", 0))
    if (g.get("groups", 1) != 1 or list(g.get("kernel") or []) != [3, 3] or any(s != 1 for s in g.get("strides", [0]))
            or any(d != 1 for d in g.get("dilations", [0])) or max(cin, cout) < 8):
        return 0
    if cin <= 128 and cout <= 128:
        return 6
    return 4 if min(cin, cout) >= 8 else 2


def winograd_work(geometry: dict) -> float:
    """Multiplies a Winograd conv does per multiply of the direct one, its output padded to whole tiles."""
    m = int(geometry["winograd"])
    hw = geometry.get("out_hw") or []
    padded = math.prod(-(-d // m) * m for d in hw) / max(1, math.prod(hw)) if hw else 1.0
    return (m + 2) ** 2 / (9 * m * m) * padded


def mark_winograd(kernels, rules: FusionRules, precision: str) -> None:
    """Record in each dense conv's geometry the Winograd tile the runtime runs it with at ``precision``."""
    if precision not in rules.winograd:
        return
    for k in kernels:
        if k.op_class == "conv" and (tile := winograd_tile(k.geometry)):
            k.geometry["winograd"] = tile
