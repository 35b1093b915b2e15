"""Per-kernel costs from an ONNX graph (FLOPs, weight and activation bytes) after the runtime's fusions."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
import numpy as np

from edgekd.errors import EdgeKDError, first_line
from edgekd.hardware.libraries import MEASURED_LIBRARIES, mark_winograd
from edgekd.runtimes import FusionRules, fusion_rules

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}

@dataclass(frozen=True)
class OpRule:
    """How edgekd costs one op type, in the ONNX graph (``graph_cost``) and in the graph ONNX Runtime
    executes (``executed_graph_cost``) alike.

    kind: how its FLOPs are counted (see FLOP_RULES): conv, gemm, window (pooling windows), reduce (a pass
    over the input), pointwise (``per_element`` FLOPs per output element), alias (a shape-only view:
    Reshape, Flatten...; a runtime relabels the buffer), free (no kernel at run time: constants, shape
    queries, and QDQ pairs folded into the quantized kernels), copy (data movement, no arithmetic).
    op_class: the kernel class whose coefficients it takes (conv and gemm kinds decide theirs from shapes).
    """

    kind: str
    op_class: str = "data"
    per_element: float = 0.0
    activation: bool = False      # a pointwise activation a conv/gemm kernel may fuse as its epilogue


def _pointwise(per: float, activation: bool = False) -> OpRule:
    return OpRule("pointwise", "elementwise", per, activation)


_CONV, _GEMM = OpRule("conv", "conv"), OpRule("gemm", "gemm")
_WINDOW, _REDUCE = OpRule("window", "pool"), OpRule("reduce", "pool")
_ALIAS, _FREE, _COPY = OpRule("alias", "data"), OpRule("free", "data"), OpRule("copy", "data")

# Every op type edgekd costs, ONNX and ONNX Runtime's contrib/NCHWc ops in one table: a new op is one row.
OPS: dict[str, OpRule] = {
    **dict.fromkeys(["Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "FusedConv"], _CONV),
    **dict.fromkeys(["Gemm", "MatMul", "QLinearMatMul", "MatMulInteger", "FusedGemm", "FusedMatMul"], _GEMM),
    **dict.fromkeys(["MaxPool", "AveragePool", "LpPool"], _WINDOW),
    **dict.fromkeys(["GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum"], _REDUCE),
    **dict.fromkeys(["Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"], _ALIAS),
    **dict.fromkeys(["Shape", "Constant", "ConstantOfShape", "QuantizeLinear", "DequantizeLinear", "Size", "Range"],
                    _FREE),
    **dict.fromkeys(["Concat", "Transpose", "Slice", "Split", "Pad", "Resize", "Upsample", "Gather", "Expand", "Tile",
                     "DepthToSpace", "SpaceToDepth", "Cast", "ReorderInput", "ReorderOutput"], _COPY),
    "Relu": _pointwise(1, True), "LeakyRelu": _pointwise(2, True), "PRelu": _pointwise(2, True),
    "Clip": _pointwise(2, True), "Sigmoid": _pointwise(4, True), "HardSigmoid": _pointwise(3, True),
    "HardSwish": _pointwise(4, True), "Tanh": _pointwise(4, True), "Elu": _pointwise(4, True),
    "Selu": _pointwise(4, True), "Gelu": _pointwise(8, True), "Softplus": _pointwise(4, True),
    "Mish": _pointwise(8, True), "QuickGelu": _pointwise(5), "BiasGelu": _pointwise(9), "FastGelu": _pointwise(9),
    "Erf": _pointwise(8), "Exp": _pointwise(4), "Log": _pointwise(4), "Sqrt": _pointwise(1),
    "Reciprocal": _pointwise(1), "Pow": _pointwise(1), "Neg": _pointwise(1), "Abs": _pointwise(1),
    "Add": _pointwise(1), "Sub": _pointwise(1), "Mul": _pointwise(1), "Div": _pointwise(1), "Sum": _pointwise(1),
    "Max": _pointwise(1), "Min": _pointwise(1), "Where": _pointwise(1),
    "BatchNormalization": _pointwise(2), "InstanceNormalization": _pointwise(5),
    "LayerNormalization": _pointwise(5), "Softmax": _pointwise(5), "LogSoftmax": _pointwise(5),
}
# An op missing from the table is costed as one FLOP per output element and reported as unknown.
UNKNOWN_OP = _pointwise(1)
FREE_OPS = frozenset(op for op, rule in OPS.items() if rule.kind in ("alias", "free"))
ALIAS_OPS = frozenset(op for op, rule in OPS.items() if rule.kind == "alias")
ACTIVATIONS = frozenset(op for op, rule in OPS.items() if rule.activation)


def op_rule(op_type: str) -> OpRule:
    return OPS.get(op_type, UNKNOWN_OP)


def _elems(shape) -> int:
    return math.prod(int(d) for d in shape) if shape else 0


def _conv_rule(node, in_shapes, out_shape) -> tuple[str, int, dict]:
    """(class, FLOPs, geometry) of a conv: 2 per multiply-accumulate plus 1 per bias add."""
    # QLinearConv puts scales and zero points between the data and the weight: the weight is the next
    # input of the data's rank. Its bias is input 8; Conv's and FusedConv's input 2; ConvInteger has none.
    x = in_shapes[0] if in_shapes else []
    w = next((shape for shape in in_shapes[1:] if shape and len(shape) == len(x)), [])
    group = int(_attr(node, "group", 1) or 1)
    out_elems = _elems(out_shape)
    bias = {"QLinearConv": 8, "ConvInteger": None}.get(node.op_type, 2)
    has_bias = bias is not None and len(in_shapes) > bias and bool(in_shapes[bias])
    transposed = node.op_type == "ConvTranspose"
    if transposed:  # weight (Cin, Cout/g, kh, kw): each input element feeds Cout/g x kh x kw outputs
        flops = 2 * _elems(x) * (w[1] * _elems(w[2:]) if len(w) > 1 else 0)
    else:           # weight (Cout, Cin/g, kh, kw)
        flops = 2 * out_elems * (w[1] * _elems(w[2:]) if len(w) > 1 else 0)
    flops += out_elems if has_bias else 0
    cout = (w[1] * group if transposed else w[0]) if len(w) > 1 else 0
    geometry = {"cin": int(x[1]) if len(x) > 1 else 0, "cout": int(cout), "groups": group,
                "kernel": [int(k) for k in w[2:]], "out_pixels": _elems(out_shape[2:]),
                "out_hw": [int(d) for d in out_shape[2:]],
                "strides": [int(s) for s in (_attr(node, "strides", None) or [1] * len(w[2:]))],
                "dilations": [int(d) for d in (_attr(node, "dilations", None) or [1] * len(w[2:]))]}
    # Grouped convs (RegNet, ResNeXt) run as many small per-group products: costed apart from dense ones.
    return ("dwconv" if group > 1 else "conv"), int(flops), geometry


def _gemm_rule(node, in_shapes, out_shape) -> tuple[str, int, dict]:
    a = in_shapes[0] if in_shapes else []
    k = (a[0] if int(_attr(node, "transA", 0) or 0) else a[-1]) if a else 0
    out_elems = _elems(out_shape)
    has_c = node.op_type in ("Gemm", "FusedGemm") and len(in_shapes) > 2 and bool(in_shapes[2])
    n = int(out_shape[-1]) if out_shape else 0
    geometry = {"m": int(out_elems // max(1, n)), "n": n, "k": int(k)}
    return "gemm", int(2 * out_elems * k + (out_elems if has_c else 0)), geometry


# kind -> (node, input shapes, output shape) -> (class or None for the rule's own, FLOPs, geometry).
FLOP_RULES = {
    "conv": _conv_rule,
    "gemm": _gemm_rule,
    "window": lambda node, ins, out: (None, _elems(out) * _elems(_attr(node, "kernel_shape", [1])), {}),
    "reduce": lambda node, ins, out: (None, _elems(ins[0]) if ins else 0, {}),
    "pointwise": lambda node, ins, out: (None, int(op_rule(node.op_type).per_element * _elems(out)), {}),
    "alias": lambda node, ins, out: (None, 0, {}),
    "free": lambda node, ins, out: (None, 0, {}),
    "copy": lambda node, ins, out: (None, 0, {}),
}


def op_cost(node, in_shapes: list, out_shape: list) -> tuple[str, int, dict]:
    """Kernel class, FLOPs and shape facts of one node, from its input shapes (data and weights, in the
    node's input order; [] where unknown) and its first output's shape: what both cost functions use."""
    rule = op_rule(node.op_type)
    op_class, flops, geometry = FLOP_RULES[rule.kind](node, in_shapes, out_shape)
    return op_class or rule.op_class, int(flops), geometry


def fusions_for(runtime: str) -> FusionRules:
    """What ``runtime`` fuses: a registered runtime's descriptor, a measured kernel library, or "none" (nothing)."""
    if runtime == "none":
        return FusionRules()
    return MEASURED_LIBRARIES.get(runtime) or fusion_rules(runtime)


def cost_runtimes() -> list[str]:
    """Every runtime a graph can be costed for: the registered target runtimes and the measured libraries."""
    from edgekd.runtimes import target_runtimes

    return [*target_runtimes(), *MEASURED_LIBRARIES]


@dataclass
class Kernel:
    """One kernel the runtime launches: an anchor op plus whatever it fused."""

    name: str
    op_type: str                  # the anchor op, e.g. "Conv"
    op_class: str                 # conv | dwconv | gemm | pool | elementwise | data
    ops: list[str]                # every ONNX op in the kernel, e.g. ["Conv", "BatchNormalization", "Relu"]
    flops: int
    weight_bytes: int
    input_bytes: int
    output_bytes: int
    output_shape: list[int]
    params: int = 0
    # Shape facts the latency model needs beyond FLOPs: channels, groups, kernel size, output pixels.
    geometry: dict = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list, repr=False)
    output: str = field(default="", repr=False)

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.input_bytes + self.output_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("inputs"), d.pop("output")
        d["bytes"] = self.bytes
        return d


@dataclass
class GraphCost:
    """Kernels of one model at one precision on one runtime, with totals for the report."""

    kernels: list[Kernel]
    runtime: str
    precision: str
    input_shape: list[int]
    params: int
    flops: int
    weight_bytes: int
    peak_activation_bytes: int
    unknown_ops: list[str]

    @property
    def memory_mb(self) -> float:
        return (self.weight_bytes + self.peak_activation_bytes) / 2**20

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "precision": self.precision, "input_shape": self.input_shape,
                "params": self.params, "flops": self.flops, "weight_bytes": self.weight_bytes,
                "peak_activation_bytes": self.peak_activation_bytes, "memory_mb": self.memory_mb,
                "unknown_ops": self.unknown_ops, "kernels": [k.to_dict() for k in self.kernels]}


# --- ONNX export with a cache ------------------------------------------------------------------

_EXPORT_LOCK = threading.Lock()
_MEMO: dict[str, Path] = {}


def export_onnx(model, input_shape, path: Path) -> Path:
    """Export ``model`` (eval mode, batch 1 static shape) with the dynamo exporter, atomically."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    from edgekd.fsutil import atomic_path

    model = model.eval()
    example = torch.zeros(tuple(input_shape), dtype=torch.float32)
    with atomic_path(path) as tmp, _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            # The exporter prints progress lines on stdout; keep edgekd's output clean.
            with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False,
                                  input_names=["input"], output_names=["logits"])
        finally:
            logging.getLogger("torch.onnx").setLevel(previous)
    return Path(path)


def cached_onnx(arch: str, *, num_classes: int, input_shape, width: float = 1.0, depth: int = 1, **kw) -> Path:
    """ONNX file of a registered architecture (random weights: latency does not depend on values).

    Dynamo export takes about a second per model, and width selection needs a graph per candidate, so
    graphs are cached under the user cache folder keyed by everything that changes the graph.
    """
    import torch

    from edgekd.version import __version__
    from edgekd.hardware.targets import cache_dir

    shape = [int(s) for s in input_shape]
    if len(shape) == 3:
        shape = [1, *shape]
    key_src = json.dumps({"arch": arch, "num_classes": num_classes, "shape": shape, "width": float(width),
                          "depth": int(depth), "kw": kw, "torch": torch.__version__, "edgekd": __version__},
                         sort_keys=True, default=str)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    if key in _MEMO and _MEMO[key].is_file():
        return _MEMO[key]
    path = cache_dir() / "graphs" / f"{arch}-w{width:g}-d{depth}-{'x'.join(map(str, shape))}-{key}.onnx"
    if not path.is_file():
        from edgekd.models import create

        torch.manual_seed(0)
        model = create(arch, num_classes=num_classes, in_channels=shape[1], width=width, depth=depth, **kw)
        export_onnx(model, shape, path)
    _MEMO[key] = path
    return path


# --- cost extraction ---------------------------------------------------------------------------

def _dims(vi) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            return None
    return dims


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def load_graph(source, input_shape=None):
    """An ONNX ModelProto with every tensor shape inferred (``input_shape`` fixes dynamic inputs).

    The input shape is resolved by edgekd.modelfile: a dynamic batch is 1, ``input_shape`` must agree
    with the model's static dimensions, and a shape too large to run is refused before any cost.
    """
    import onnx

    from edgekd.modelfile import load_onnx, resolve_shape

    model = source if isinstance(source, onnx.ModelProto) else load_onnx(source)
    weights = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in weights]
    if input_shape is not None and len(graph_inputs) != 1:
        raise EdgeKDError(f"the model has {len(graph_inputs)} inputs; --input sets the shape of exactly one",
                          "export the model with a single image input")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for inp in model.graph.input:
        if inp.name in weights:
            continue
        tensor_type = inp.type.tensor_type
        dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
        shape = resolve_shape(dims, input_shape, name=f"input {inp.name!r}")
        if not len(tensor_type.shape.dim):  # rank unknown in the file: take the given shape as is
            tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in shape)
        for d, size in zip(tensor_type.shape.dim, shape):
            d.Clear()
            d.dim_value = size
    # Stale intermediate shapes from a dynamic-batch export would shadow the fixed input's.
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # noqa: BLE001 - onnx raises InferenceError and plain RuntimeErrors
        raise EdgeKDError(f"ONNX shape inference failed ({first_line(err)})",
                          "pass --input with the model's full input shape, e.g. 1x3x224x224") from None
    return model


def graph_cost(source, *, runtime: str = "onnxruntime", precision: str = "fp32", input_shape=None) -> GraphCost:
    """Cost of every kernel the runtime would launch for this ONNX graph, after its fusions.

    FLOPs count a multiply-accumulate as 2 (plus 1 per bias add); bytes are weights read plus
    activations read and written, at the element size of ``precision``.
    """
    if precision not in BYTES_PER_ELEMENT:
        raise EdgeKDError(f"unknown precision {precision!r}", f"use one of {', '.join(BYTES_PER_ELEMENT)}")
    fusions_for(runtime)  # an unknown runtime is refused before the graph is read
    return shaped_graph_cost(load_graph(source, input_shape).graph, runtime=runtime, precision=precision)


def shaped_graph_cost(g, *, runtime: str, precision: str) -> GraphCost:
    """:func:`graph_cost` of an ONNX GraphProto whose every tensor shape is already known (value_info,
    initializer dims): what ``load_graph`` infers, or what ``edgekd.hardware.fastcost`` traces."""
    # What a runtime fuses is part of its descriptor (edgekd.runtimes); "none" costs the raw graph node by node.
    fuser = _Fuser(g, fusions_for(runtime), BYTES_PER_ELEMENT[precision])
    for node in g.node:
        fuser.add(node)
    kernels, alias = fuser.kernels, fuser.alias
    mark_winograd(kernels, fuser.rules, precision)
    inputs0 = [i for i in g.input if i.name not in fuser.weights]
    in_shape = fuser.shapes.get(inputs0[0].name, []) if inputs0 else []
    peak = _peak_activation_bytes(kernels, [alias.get(i.name, i.name) for i in inputs0],
                                  [alias.get(o.name, o.name) for o in g.output], fuser.nbytes)
    return GraphCost(kernels=kernels, runtime=runtime, precision=precision, input_shape=in_shape,
                     params=sum(k.params for k in kernels), flops=sum(k.flops for k in kernels),
                     weight_bytes=sum(k.weight_bytes for k in kernels), peak_activation_bytes=peak,
                     unknown_ops=sorted(set(fuser.unknown)))


# Integer initializers (axes, shapes) are operands, not weights; int8 ones are quantized weights.
_INDEX_TYPES = frozenset({6, 7, 12, 13})  # INT32, INT64, UINT32, UINT64


class _Fuser:
    """Walks a shaped graph's nodes in order and groups them into the kernels a runtime launches: BN folded
    into the conv before it, activations (and what ``rules`` allows) fused as the epilogue of their producer."""

    def __init__(self, g, rules: FusionRules, esize: int):
        self.rules, self.esize = rules, esize
        self.init_sizes = {i.name: math.prod(i.dims) if len(i.dims) else 1 for i in g.initializer
                           if not (i.data_type in _INDEX_TYPES and len(i.dims) <= 1)}
        index_consts = {i.name for i in g.initializer if i.name not in self.init_sizes}
        self.shapes: dict[str, list[int]] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            d = _dims(vi)
            if d is not None:
                self.shapes[vi.name] = d
        for i in g.initializer:
            self.shapes[i.name] = list(i.dims)
        for n in g.node:  # Constant nodes are weights too
            if n.op_type == "Constant":
                t = _attr(n, "value")
                if t is not None and hasattr(t, "dims") and not (t.data_type in _INDEX_TYPES and len(t.dims) <= 1):
                    self.init_sizes[n.output[0]] = math.prod(t.dims) if len(t.dims) else 1
                    self.shapes[n.output[0]] = list(t.dims)
                elif t is not None:
                    index_consts.add(n.output[0])
        self.weights = set(self.init_sizes) | index_consts
        self.consumers: dict[str, int] = {}
        for n in g.node:
            for x in n.input:
                if x:
                    self.consumers[x] = self.consumers.get(x, 0) + 1
        for o in g.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1
        self.alias: dict[str, str] = {}      # tensor -> the tensor it aliases through free ops (reshape etc.)
        self.producer: dict[str, Kernel] = {}  # tensor -> kernel that writes it
        self.epilogues: dict[int, int] = {}
        self.kernels: list[Kernel] = []
        self.unknown: list[str] = []

    def nbytes(self, t: str) -> int:
        s = self.shapes.get(t)
        return math.prod(s) * self.esize if s is not None else 0

    def add(self, node) -> None:
        op = node.op_type
        acts = [x for x in node.input if x and x not in self.weights]
        if op in FREE_OPS:
            if acts and node.output:
                self.alias[node.output[0]] = self.alias.get(acts[0], acts[0])
            return
        acts = [self.alias.get(x, x) for x in acts]
        out = node.output[0]
        # Try to fuse into the kernel that produced this op's main input.
        first = acts[0] if acts else None
        host = self.producer.get(first) if first else None
        sole = host is not None and self.consumers.get(host.output, 0) == 1 and host.output == first
        if sole and op in self.rules.fold and host.op_class in ("conv", "dwconv") and not host.ops[1:]:
            host.ops.append(op)
            host.output = out
            self.producer[out] = host
        elif sole and self._fusable(op, host) and self.shapes.get(out, []) == self.shapes.get(first, self.shapes.get(out, [])):
            self._fuse_epilogue(node, host, acts, first)
        else:
            self._new_kernel(node, acts)

    def _fusable(self, op: str, host: Kernel) -> bool:
        rules = self.rules
        anchor_ok = ((host.op_class in ("conv", "dwconv", "gemm") and self.epilogues.get(id(host), 0) < rules.max_epilogue)
                     or (rules.pointwise_chain and host.op_class == "elementwise"))
        return anchor_ok and (op in rules.epilogue or (rules.epilogue_activations and op in ACTIVATIONS))

    def _weight_elems(self, node) -> int:
        return sum(self.init_sizes.get(x, 0) for x in node.input if x and x in self.weights)

    def _fuse_epilogue(self, node, host: Kernel, acts: list[str], first: str) -> None:
        out = node.output[0]
        out_shape = self.shapes.get(out, [])
        w_elems = self._weight_elems(node)
        host.ops.append(node.op_type)
        host.flops += int(op_rule(node.op_type).per_element * (math.prod(out_shape) if out_shape else 0))
        host.weight_bytes += w_elems * self.esize
        host.params += w_elems
        extra = [x for x in acts[1:] if x != first]
        host.input_bytes += sum(self.nbytes(x) for x in extra)
        host.inputs.extend(extra)
        host.output_bytes = self.nbytes(out)
        host.output_shape = out_shape
        host.output = out
        self.epilogues[id(host)] = self.epilogues.get(id(host), 0) + 1
        self.producer[out] = host

    def _new_kernel(self, node, acts: list[str]) -> None:
        op, out = node.op_type, node.output[0]
        out_shape = self.shapes.get(out, [])
        op_class, flops, geometry = op_cost(node, [self.shapes.get(x, []) if x else [] for x in node.input], out_shape)
        if op not in OPS:
            self.unknown.append(op)
        w_elems = self._weight_elems(node)
        k = Kernel(name=node.name or f"{op}_{len(self.kernels)}", op_type=op, op_class=op_class, ops=[op],
                   flops=int(flops), weight_bytes=w_elems * self.esize, input_bytes=sum(self.nbytes(x) for x in acts),
                   output_bytes=sum(self.nbytes(o) for o in node.output if o), output_shape=out_shape,
                   params=w_elems, geometry=geometry, inputs=list(acts), output=out)
        self.kernels.append(k)
        for o in node.output:
            if o:
                self.producer[o] = k


# --- the graph ONNX Runtime actually executes --------------------------------------------------

# Element sizes of the type names ONNX Runtime's profiler writes.
_PROFILE_ELEMENT_BYTES = {"float": 4, "float16": 2, "bfloat16": 2, "double": 8, "int8": 1, "uint8": 1,
                          "int32": 4, "int64": 8, "bool": 1}

_ONNX_ELEMENT_NAMES = {1: "float", 10: "float16", 16: "bfloat16", 11: "double", 3: "int8", 2: "uint8", 6: "int32",
                       7: "int64", 9: "bool"}  # ONNX element types by the names ONNX Runtime's profiler writes


def _is_blocked(tensor: str, producers: dict) -> bool:
    """Whether ``tensor`` in ONNX Runtime's optimized graph is in the NCHWc (channel-blocked) layout.

    Blocked tensors come out of NCHWc-domain nodes (except ReorderOutput) and keep their layout through
    the element-wise ops ORT lets consume them directly (activations such as QuickGelu, Sigmoid, Mul):
    their shapes show the padded channel count. Anything else (graph inputs, Concat, Reshape, ...) is plain.
    """
    seen = 0
    while seen < 64:  # element-wise chains are short; the bound only guards against malformed graphs
        src = producers.get(tensor)
        if src is None:
            return False
        if src.domain == "com.microsoft.nchwc":
            return src.op_type != "ReorderOutput"
        if src.op_type not in OPS or OPS[src.op_type].kind != "pointwise" or not src.input:
            return False
        tensor, seen = src.input[0], seen + 1
    return False


def executed_graph_cost(source, *, threads: int | None = 1, input_shape=None, precision: str = "fp32") -> GraphCost:
    """Cost of the kernels ONNX Runtime on this machine actually runs for an ONNX graph.

    ONNX Runtime rewrites the graph before running it (ORT_ENABLE_ALL, the level edgekd times with): BN
    folded, activations and residual adds fused into convs, and on x86 convs whose channels suit the SIMD
    block converted to NCHWc kernels, with ReorderInput/ReorderOutput kernels inserted where a blocked
    region meets plain layout; convs whose channels do not suit stay on the plain im2col path. Which
    happens depends on every channel count, so instead of re-deriving ORT's rules this builds the same
    session ``measure_onnx_ms`` times, keeps its optimized graph (ops, attributes, weights) and runs it once
    with profiling on for the shapes of every executed node. The blocked shapes already carry the channel
    padding (a 12-channel NCHWc conv computes 16), so these kernels are marked ``padded``.
    """
    model = load_graph(source, input_shape)
    events, opt = _profile_optimized(model, threads)
    from edgekd.hardware.targets import host_channel_multiple

    inits = {i.name: (_ONNX_ELEMENT_NAMES.get(i.data_type, "float"), [int(d) for d in i.dims])
             for i in opt.graph.initializer}
    graph_inputs = [i.name for i in opt.graph.input if i.name not in inits]
    sizes: dict[str, int] = {}
    block = host_channel_multiple()  # what MLAS blocks channels by on this CPU: 16 with AVX-512, 8 with AVX2
    kernels = [_executed_kernel(node, args, name, inits, producers, sizes, block)
               for node, args, name, producers in _profiled_nodes(events, opt)]
    in_shape = [int(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim] if graph_inputs else []
    peak = _peak_activation_bytes(kernels, graph_inputs, [o.name for o in opt.graph.output], lambda t: sizes.get(t, 0))
    # Params and FLOPs as the model defines them (what capacity comparisons use), not the padded ones.
    nominal = graph_cost(model, runtime="onnxruntime", precision=precision)
    return GraphCost(kernels=kernels, runtime="onnxruntime", precision=precision, input_shape=in_shape,
                     params=nominal.params, flops=nominal.flops,
                     weight_bytes=sum(k.weight_bytes for k in kernels), peak_activation_bytes=peak, unknown_ops=[])


def _profile_optimized(model, threads: int | None):
    """Run ``model`` once in the session ``measure_onnx_ms`` times, profiling on: (profile events, the
    optimized graph ONNX Runtime saved)."""
    import json as _json
    import tempfile

    import onnx

    from edgekd.hardware.measure import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        onnx.save(model, str(src))
        optimized = Path(tmp) / "optimized.onnx"
        options = {"optimized_model_filepath": str(optimized), "enable_profiling": True,
                   "profile_file_prefix": str(Path(tmp) / "profile")}
        sess = ort_session(src, threads, options=options)
        feed = {}
        for inp in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                     "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(inp.type, np.float32)
            feed[inp.name] = np.zeros(shape, dtype=dtype)
        sess.run(None, feed)
        events = _json.loads(Path(sess.end_profiling()).read_text())
        opt = onnx.load(str(optimized))
        del sess
    return events, opt


def _profiled_nodes(events, opt):
    """(node, profiler args, name, producers) of every kernel the profiler timed, in run order."""
    nodes = {n.name: n for n in opt.graph.node if n.name}
    # Nodes ORT creates while optimizing may have no name in the saved graph (HardSwish becomes an unnamed
    # HardSigmoid + Mul), while the profiler calls them <op>_<index>: they are matched by op type, in order.
    unnamed: dict[str, list] = {}
    for n in opt.graph.node:
        if not n.name:
            unnamed.setdefault(n.op_type, []).append(n)
    producers = {o: n for n in opt.graph.node for o in n.output if o}
    seen = set()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        node = nodes.get(name)
        if node is None and unnamed.get(args.get("op_name")) and name not in seen:
            node = unnamed[args["op_name"]].pop(0)
        if node is None or name in seen:
            continue
        seen.add(name)
        yield node, args, name, producers


def _profiled_size(entry) -> int:
    dtype, dims = entry
    return int(np.prod(dims)) * _PROFILE_ELEMENT_BYTES.get(dtype, 4) if dims is not None else 0


def _executed_kernel(node, args: dict, name: str, inits: dict, producers: dict, sizes: dict, nchwc_block: int) -> Kernel:
    """One executed kernel from its node in the optimized graph and the shapes the profiler recorded;
    ``sizes`` (tensor -> bytes) is filled for the peak-memory walk."""
    in_shapes = [next(iter(d.items())) for d in args.get("input_type_shape", [])]
    out_shapes = [next(iter(d.items())) for d in args.get("output_type_shape", [])]
    names_in = [x for x in node.input if x]
    if len(in_shapes) < len(names_in):
        # Weights a kernel pre-packed at load time (Gemm's B, MatMul's B) are released and missing from the
        # profile, yet the kernel still reads their packed copy every run: take them from the graph.
        profiled = iter(in_shapes)
        in_shapes = [inits[x] if x in inits else next(profiled, ("float", None)) for x in names_in]
    w_bytes = a_bytes = params = 0
    acts = []
    for x, entry in zip(names_in, in_shapes):
        if x in inits and entry[0] in ("int64", "int32"):
            continue  # axes and shapes: operands, not weights
        if x in inits:
            w_bytes += _profiled_size(entry)
            params += int(np.prod(entry[1])) if len(entry[1]) > 1 or node.op_type in ("Conv", "FusedConv") else 0
        else:
            a_bytes += _profiled_size(entry)
            acts.append(x)
            sizes.setdefault(x, _profiled_size(entry))
    o_bytes = sum(_profiled_size(entry) for entry in out_shapes)
    for o, entry in zip([o for o in node.output if o], out_shapes):
        sizes[o] = _profiled_size(entry)
    op = node.op_type
    out_dims = [int(x) for x in out_shapes[0][1]] if out_shapes and out_shapes[0][1] is not None else []
    fused = [op] + [a.s.decode() for a in node.attribute if a.name == "activation" and a.s]
    dims_by_name = {x: list(entry[1] or []) for x, entry in zip(names_in, in_shapes)}
    op_class, flops, geometry = op_cost(node, [dims_by_name.get(x, []) if x else [] for x in node.input], out_dims)
    kind = op_rule(op).kind
    if kind == "conv":
        if len(names_in) > 3 and names_in[3]:
            fused.append("Sum")  # NCHWc ConvAddActivation: the residual input is summed in the kernel
        geometry.update(_executed_conv_geometry(node, out_dims, names_in, producers, nchwc_block))
    elif kind == "window":
        geometry = {"layout": "nchwc" if node.domain == "com.microsoft.nchwc" else "nchw"}
    elif kind == "alias":
        a_bytes = o_bytes = 0  # the buffer is relabelled, not copied
    return Kernel(name=name, op_type=op, op_class=op_class, ops=fused, flops=int(flops),
                  weight_bytes=int(w_bytes), input_bytes=int(a_bytes), output_bytes=int(o_bytes),
                  output_shape=[int(x) for x in out_dims], params=int(params), geometry=geometry,
                  inputs=acts, output=node.output[0] if node.output else "")


def _executed_conv_geometry(node, out_dims, names_in, producers, nchwc_block: int) -> dict:
    """Facts of a conv in ONNX Runtime's optimized graph beyond its shapes: padding, layout, channel block.

    The blocked shapes already carry the channel padding (a 12-channel NCHWc conv computes 16): ``padded``.
    """
    blocked = node.domain == "com.microsoft.nchwc"
    g = {"out_width": int(out_dims[-1]) if len(out_dims) > 2 else 1,
         "pads": [int(x) for x in (_attr(node, "pads", None) or [])],
         "strides": [int(x) for x in (_attr(node, "strides", None) or [])],
         "layout": "nchwc" if blocked else "nchw", "padded": True}
    if blocked:
        g["block"] = nchwc_block  # channels per block: the width of each output-channel block
        # An NCHWc conv whose input comes straight from a plain tensor (no ReorderInput) reads NCHW.
        g["input_layout"] = "nchwc" if names_in and _is_blocked(names_in[0], producers) else "nchw"
    return g


def _peak_activation_bytes(kernels: list[Kernel], graph_inputs, graph_outputs, nbytes) -> int:
    """Largest sum of live activation tensors while running the kernels in order (a greedy allocator)."""
    last_use: dict[str, int] = {}
    for i, k in enumerate(kernels):
        for x in k.inputs:
            last_use[x] = i
    for o in graph_outputs:
        last_use[o] = len(kernels)
    live = {t: nbytes(t) for t in graph_inputs}
    peak = sum(live.values())
    for i, k in enumerate(kernels):
        live[k.output] = nbytes(k.output)
        peak = max(peak, sum(live.values()))
        for t in list(live):
            if last_use.get(t, -1) <= i and t not in graph_outputs:
                del live[t]
    return int(peak)


def model_cost(model, input_shape, *, runtime="onnxruntime", precision="fp32", path: Path | None = None) -> GraphCost:
    """Export a torch module (to ``path`` or a temporary file) and cost its graph."""
    import tempfile

    if path is not None:
        export_onnx(model, input_shape, path)
        return graph_cost(path, runtime=runtime, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        p = export_onnx(model, input_shape, Path(tmp) / "model.onnx")
        return graph_cost(p, runtime=runtime, precision=precision)
