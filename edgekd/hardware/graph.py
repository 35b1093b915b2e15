"""Per-kernel costs from an ONNX graph (FLOPs, weight and activation bytes) after the runtime's fusions."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
import numpy as np

from edgekd.errors import EdgeKDError, first_line
from edgekd.runtimes import FusionRules, fusion_rules

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}

# op type -> (kernel class, FLOPs per output element for pointwise ops). Conv/Gemm/pools are counted
# from their shapes. "free" ops move no data at run time (a runtime aliases reshapes; QDQ pairs are
# folded into the quantized kernels), so they are not kernels at all.
OP_TABLE: dict[str, tuple[str, float]] = {
    "Conv": ("conv", 0), "ConvTranspose": ("conv", 0), "QLinearConv": ("conv", 0), "ConvInteger": ("conv", 0),
    "Gemm": ("gemm", 0), "MatMul": ("gemm", 0), "QLinearMatMul": ("gemm", 0), "MatMulInteger": ("gemm", 0),
    "MaxPool": ("pool", 0), "AveragePool": ("pool", 0), "GlobalAveragePool": ("pool", 0),
    "GlobalMaxPool": ("pool", 0), "ReduceMean": ("pool", 0), "ReduceMax": ("pool", 0), "ReduceSum": ("pool", 0),
    "LpPool": ("pool", 0),
    "Relu": ("elementwise", 1), "LeakyRelu": ("elementwise", 2), "PRelu": ("elementwise", 2),
    "Clip": ("elementwise", 2), "Sigmoid": ("elementwise", 4), "HardSigmoid": ("elementwise", 3),
    "HardSwish": ("elementwise", 4), "Tanh": ("elementwise", 4), "Elu": ("elementwise", 4),
    "Selu": ("elementwise", 4), "Gelu": ("elementwise", 8), "Erf": ("elementwise", 8), "Exp": ("elementwise", 4),
    "Log": ("elementwise", 4), "Sqrt": ("elementwise", 1), "Reciprocal": ("elementwise", 1), "Pow": ("elementwise", 1),
    "Neg": ("elementwise", 1), "Abs": ("elementwise", 1), "Softplus": ("elementwise", 4), "Mish": ("elementwise", 8),
    "Add": ("elementwise", 1), "Sub": ("elementwise", 1), "Mul": ("elementwise", 1), "Div": ("elementwise", 1),
    "Sum": ("elementwise", 1), "Max": ("elementwise", 1), "Min": ("elementwise", 1), "Where": ("elementwise", 1),
    "BatchNormalization": ("elementwise", 2), "InstanceNormalization": ("elementwise", 5),
    "LayerNormalization": ("elementwise", 5), "Softmax": ("elementwise", 5), "LogSoftmax": ("elementwise", 5),
    "Concat": ("data", 0), "Transpose": ("data", 0), "Slice": ("data", 0), "Split": ("data", 0), "Pad": ("data", 0),
    "Resize": ("data", 0), "Upsample": ("data", 0), "Gather": ("data", 0), "Expand": ("data", 0), "Tile": ("data", 0),
    "DepthToSpace": ("data", 0), "SpaceToDepth": ("data", 0), "Cast": ("data", 0),
}
FREE_OPS = {
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Constant", "ConstantOfShape",
    "QuantizeLinear", "DequantizeLinear", "Size", "Range",
}
# Activation ops; a runtime whose FusionRules say epilogue_activations fuses every one of them.
ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
               "Gelu", "Softplus", "Mish"}


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

    from edgekd import __version__
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


def _conv_flops(node, in_shape, w_shape, out_shape, has_bias: bool) -> int:
    group = int(_attr(node, "group", 1) or 1)
    out_elems = int(np.prod(out_shape))
    if node.op_type == "ConvTranspose":
        in_elems = int(np.prod(in_shape))
        per_in = (w_shape[1]) * int(np.prod(w_shape[2:]))  # weight: (Cin, Cout/g, kh, kw)
        return 2 * in_elems * per_in + (out_elems if has_bias else 0)
    per_out = (w_shape[1]) * int(np.prod(w_shape[2:]))      # weight: (Cout, Cin/g, kh, kw)
    return 2 * out_elems * per_out + (out_elems if has_bias else 0)


def graph_cost(source, *, runtime: str = "onnxruntime", precision: str = "fp32", input_shape=None) -> GraphCost:
    """Cost of every kernel the runtime would launch for this ONNX graph, after its fusions.

    FLOPs count a multiply-accumulate as 2 (plus 1 per bias add); bytes are weights read plus
    activations read and written, at the element size of ``precision``.
    """
    # What a runtime fuses is part of its descriptor (edgekd.runtimes); "none" costs the raw graph node by node.
    rules = FusionRules() if runtime == "none" else fusion_rules(runtime)
    if precision not in BYTES_PER_ELEMENT:
        raise EdgeKDError(f"unknown precision {precision!r}", f"use one of {', '.join(BYTES_PER_ELEMENT)}")
    model = load_graph(source, input_shape)
    esize = BYTES_PER_ELEMENT[precision]
    g = model.graph
    # Integer initializers (axes, shapes) are operands, not weights; int8 ones are quantized weights.
    index_types = {6, 7, 12, 13}  # INT32, INT64, UINT32, UINT64
    init_sizes = {i.name: int(np.prod(i.dims)) if len(i.dims) else 1 for i in g.initializer
                  if not (i.data_type in index_types and len(i.dims) <= 1)}
    index_consts = {i.name for i in g.initializer if i.name not in init_sizes}
    shapes: dict[str, list[int]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        d = _dims(vi)
        if d is not None:
            shapes[vi.name] = d
    for i in g.initializer:
        shapes[i.name] = list(i.dims)
    for n in g.node:  # Constant nodes are weights too
        if n.op_type == "Constant":
            t = _attr(n, "value")
            if t is not None and hasattr(t, "dims") and not (t.data_type in index_types and len(t.dims) <= 1):
                init_sizes[n.output[0]] = int(np.prod(t.dims)) if len(t.dims) else 1
                shapes[n.output[0]] = list(t.dims)
            elif t is not None:
                index_consts.add(n.output[0])
    weights = set(init_sizes) | index_consts
    consumers: dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            if x:
                consumers[x] = consumers.get(x, 0) + 1
    for o in g.output:
        consumers[o.name] = consumers.get(o.name, 0) + 1

    inputs0 = [i for i in g.input if i.name not in weights]
    in_shape = shapes.get(inputs0[0].name, []) if inputs0 else []
    alias: dict[str, str] = {}      # tensor -> the tensor it aliases through free ops (reshape etc.)
    producer: dict[str, Kernel] = {}  # tensor -> kernel that writes it
    epilogue_count: dict[int, int] = {}
    kernels: list[Kernel] = []
    unknown: list[str] = []

    def nbytes(t: str) -> int:
        s = shapes.get(t)
        return int(np.prod(s)) * esize if s is not None else 0

    def act_inputs(node) -> list[str]:
        return [x for x in node.input if x and x not in weights]

    for node in g.node:
        op = node.op_type
        if op in FREE_OPS:
            src = act_inputs(node)
            if src and node.output:
                alias[node.output[0]] = alias.get(src[0], src[0])
            continue
        acts = [alias.get(x, x) for x in act_inputs(node)]
        w_in = [x for x in node.input if x and x in weights]
        w_elems = sum(init_sizes.get(x, 0) for x in w_in)
        out = node.output[0]
        out_shape = shapes.get(out, [])
        out_elems = int(np.prod(out_shape)) if out_shape else 0
        # Try to fuse into the kernel that produced this op's main input.
        first = acts[0] if acts else None
        host = producer.get(first) if first else None
        sole = host is not None and consumers.get(host.output, 0) == 1 and host.output == first
        if sole and op in rules.fold and host.op_class in ("conv", "dwconv") and not host.ops[1:]:
            host.ops.append(op)
            host.output = out
            producer[out] = host
            continue
        anchor_ok = host is not None and (
            (host.op_class in ("conv", "dwconv", "gemm") and epilogue_count.get(id(host), 0) < rules.max_epilogue)
            or (rules.pointwise_chain and host.op_class == "elementwise"))
        fusable = op in rules.epilogue or (rules.epilogue_activations and op in ACTIVATIONS)
        if sole and fusable and anchor_ok and out_shape == shapes.get(first, out_shape):
            per = OP_TABLE.get(op, ("elementwise", 1))[1]
            host.ops.append(op)
            host.flops += int(per * out_elems)
            host.weight_bytes += w_elems * esize
            host.params += w_elems
            extra = [x for x in acts[1:] if x != first]
            host.input_bytes += sum(nbytes(x) for x in extra)
            host.inputs.extend(extra)
            host.output_bytes = nbytes(out)
            host.output_shape = out_shape
            host.output = out
            epilogue_count[id(host)] = epilogue_count.get(id(host), 0) + 1
            producer[out] = host
            continue
        geometry = {}
        if op in ("Conv", "ConvTranspose"):
            w_shape = shapes.get(node.input[1], [])
            group = int(_attr(node, "group", 1) or 1)
            cin = shapes.get(acts[0], [0, 0])[1] if acts else 0
            # Grouped convs (RegNet, ResNeXt) run as many small per-group products, like depthwise ones.
            op_class = "dwconv" if group > 1 else "conv"
            has_bias = len(node.input) > 2 and bool(node.input[2])
            flops = _conv_flops(node, shapes.get(acts[0], []), w_shape, out_shape, has_bias)
            cout = w_shape[0] if op == "Conv" and w_shape else (w_shape[1] * group if len(w_shape) > 1 else 0)
            geometry = {"cin": int(cin), "cout": int(cout), "groups": group,
                        "kernel": [int(x) for x in w_shape[2:]], "out_pixels": int(np.prod(out_shape[2:]))}
        elif op in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0], [])
            b = shapes.get(node.input[1], [])
            op_class = "gemm"
            if op == "Gemm":
                k = a[0] if int(_attr(node, "transA", 0) or 0) else a[-1]
                has_c = len(node.input) > 2 and bool(node.input[2])
                flops = 2 * out_elems * k + (out_elems if has_c else 0)
                geometry = {"m": int(out_elems // max(1, out_shape[-1])), "n": int(out_shape[-1]), "k": int(k)}
            else:
                k = a[-1] if a else 0
                flops = 2 * out_elems * k
                geometry = {"m": int(out_elems // max(1, out_shape[-1])), "n": int(out_shape[-1]) if out_shape else 0,
                            "k": int(k)}
        elif op in ("MaxPool", "AveragePool", "LpPool"):
            op_class = "pool"
            flops = out_elems * int(np.prod(_attr(node, "kernel_shape", [1])))
        elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum"):
            op_class = "pool"
            flops = int(np.prod(shapes.get(acts[0], [0]))) if acts else 0
        elif op in OP_TABLE:
            op_class, per = OP_TABLE[op]
            flops = int(per * out_elems)
        else:
            op_class, flops = "elementwise", out_elems
            unknown.append(op)
        k = Kernel(name=node.name or f"{op}_{len(kernels)}", op_type=op, op_class=op_class, ops=[op],
                   flops=int(flops), weight_bytes=w_elems * esize, input_bytes=sum(nbytes(x) for x in acts),
                   output_bytes=sum(nbytes(o) for o in node.output if o), output_shape=out_shape,
                   params=w_elems, geometry=geometry, inputs=list(acts), output=out)
        kernels.append(k)
        for o in node.output:
            if o:
                producer[o] = k

    params = sum(k.params for k in kernels)
    peak = _peak_activation_bytes(kernels, [alias.get(i.name, i.name) for i in inputs0],
                                  [alias.get(o.name, o.name) for o in g.output], nbytes)
    return GraphCost(kernels=kernels, runtime=runtime, precision=precision, input_shape=in_shape, params=params,
                     flops=sum(k.flops for k in kernels), weight_bytes=sum(k.weight_bytes for k in kernels),
                     peak_activation_bytes=peak, unknown_ops=sorted(set(unknown)))


# --- the graph ONNX Runtime actually executes --------------------------------------------------

# Element sizes of the type names ONNX Runtime's profiler writes.
_PROFILE_ELEMENT_BYTES = {"float": 4, "float16": 2, "bfloat16": 2, "double": 8, "int8": 1, "uint8": 1,
                          "int32": 4, "int64": 8, "bool": 1}
# Ops that only relabel a buffer in ONNX Runtime (the allocation planner reuses the input): dispatch, no bytes.
ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
# Contrib and NCHWc ops in ORT's optimized graphs -> (kernel class, FLOPs per output element).
_ORT_OPS = {"ReorderInput": ("data", 0), "ReorderOutput": ("data", 0), "QuickGelu": ("elementwise", 5),
            "BiasGelu": ("elementwise", 9), "FastGelu": ("elementwise", 9), "Gelu": ("elementwise", 8),
            "FusedGemm": ("gemm", 0), "FusedMatMul": ("gemm", 0), "FusedConv": ("conv", 0)}


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
        kind = _ORT_OPS.get(src.op_type) or OP_TABLE.get(src.op_type)
        if not kind or kind[0] != "elementwise" or not src.input:
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
    import json as _json
    import tempfile

    import onnx

    from edgekd.hardware.measure import ort_session

    model = load_graph(source, input_shape)
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
    from edgekd.hardware.targets import host_channel_multiple

    nchwc_block = host_channel_multiple()  # what MLAS blocks by on this CPU: 16 with AVX-512, 8 with AVX2
    nodes = {n.name: n for n in opt.graph.node}
    producers = {o: n for n in opt.graph.node for o in n.output if o}
    inits = {i.name for i in opt.graph.initializer}
    graph_inputs = [i.name for i in opt.graph.input if i.name not in inits]
    kernels: list[Kernel] = []
    sizes: dict[str, int] = {}
    seen = set()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        node = nodes.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        args = e.get("args", {})
        in_shapes = [next(iter(d.items())) for d in args.get("input_type_shape", [])]
        out_shapes = [next(iter(d.items())) for d in args.get("output_type_shape", [])]
        names_in = [x for x in node.input if x]

        def size(entry) -> int:
            dtype, dims = entry
            return int(np.prod(dims)) * _PROFILE_ELEMENT_BYTES.get(dtype, 4) if dims is not None else 0

        w_bytes = a_bytes = params = 0
        acts = []
        for x, entry in zip(names_in, in_shapes):
            if x in inits and entry[0] in ("int64", "int32"):
                continue  # axes and shapes: operands, not weights
            if x in inits:
                w_bytes += size(entry)
                params += int(np.prod(entry[1])) if len(entry[1]) > 1 or node.op_type in ("Conv", "FusedConv") else 0
            else:
                a_bytes += size(entry)
                acts.append(x)
                sizes.setdefault(x, size(entry))
        o_bytes = sum(size(entry) for entry in out_shapes)
        for o, entry in zip([o for o in node.output if o], out_shapes):
            sizes[o] = size(entry)
        op = node.op_type
        out_dims = out_shapes[0][1] if out_shapes else []
        out_elems = int(np.prod(out_dims)) if out_dims else 0
        fused = [op] + [a.s.decode() for a in node.attribute if a.name == "activation" and a.s]
        geometry: dict = {}
        if op in ("Conv", "FusedConv", "QLinearConv", "ConvTranspose"):
            w_dims = in_shapes[1][1] if len(in_shapes) > 1 else []
            group = int(_attr(node, "group", 1) or 1)
            op_class = "dwconv" if group > 1 else "conv"
            per_out = int(np.prod(w_dims[1:])) if len(w_dims) > 1 else 0
            flops = 2 * out_elems * per_out
            if len(names_in) > 3 and names_in[3]:
                fused.append("Sum")
            geometry = {"cin": int(in_shapes[0][1][1]) if in_shapes and len(in_shapes[0][1]) > 1 else 0,
                        "cout": int(w_dims[0]) if w_dims else 0, "groups": group,
                        "kernel": [int(x) for x in w_dims[2:]], "out_pixels": int(np.prod(out_dims[2:])),
                        "out_width": int(out_dims[-1]) if len(out_dims) > 2 else 1,
                        "pads": [int(x) for x in (_attr(node, "pads", None) or [])],
                        "strides": [int(x) for x in (_attr(node, "strides", None) or [])],
                        "layout": "nchwc" if node.domain == "com.microsoft.nchwc" else "nchw", "padded": True}
            if geometry["layout"] == "nchwc":
                geometry["block"] = nchwc_block  # channels per block: the width of each output-channel block
                # An NCHWc conv whose input comes straight from a plain tensor (no ReorderInput) reads NCHW.
                geometry["input_layout"] = "nchwc" if names_in and _is_blocked(names_in[0], producers) else "nchw"
        elif op in ("Gemm", "MatMul", "FusedGemm", "FusedMatMul", "QLinearMatMul", "MatMulInteger"):
            op_class = "gemm"
            a_dims = in_shapes[0][1] if in_shapes else []
            k = (a_dims[0] if int(_attr(node, "transA", 0) or 0) else a_dims[-1]) if a_dims else 0
            flops = 2 * out_elems * int(k)
            geometry = {"m": int(out_elems // max(1, out_dims[-1])) if out_dims else 0,
                        "n": int(out_dims[-1]) if out_dims else 0, "k": int(k)}
        elif op in ("MaxPool", "AveragePool", "LpPool"):
            op_class = "pool"
            flops = out_elems * int(np.prod(_attr(node, "kernel_shape", [1])))
            geometry = {"layout": "nchwc" if node.domain == "com.microsoft.nchwc" else "nchw"}
        elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum"):
            op_class = "pool"
            flops = int(np.prod(in_shapes[0][1])) if in_shapes else 0
        elif op in ALIAS_OPS:
            op_class, flops, a_bytes, o_bytes = "data", 0, 0, 0
        elif op in _ORT_OPS:
            op_class, per = _ORT_OPS[op]
            flops = int(per * out_elems)
        elif op in OP_TABLE:
            op_class, per = OP_TABLE[op]
            flops = int(per * out_elems)
        else:
            op_class, flops = "elementwise", out_elems
        kernels.append(Kernel(name=name, op_type=op, op_class=op_class, ops=fused, flops=int(flops),
                              weight_bytes=int(w_bytes), input_bytes=int(a_bytes), output_bytes=int(o_bytes),
                              output_shape=[int(x) for x in out_dims], params=int(params), geometry=geometry,
                              inputs=acts, output=node.output[0] if node.output else ""))
    in_shape = [int(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim] if graph_inputs else []
    peak = _peak_activation_bytes(kernels, graph_inputs, [o.name for o in opt.graph.output], lambda t: sizes.get(t, 0))
    # Params and FLOPs as the model defines them (what capacity comparisons use), not the padded ones.
    nominal = graph_cost(model, runtime="onnxruntime", precision=precision)
    return GraphCost(kernels=kernels, runtime="onnxruntime", precision=precision, input_shape=in_shape,
                     params=nominal.params, flops=nominal.flops,
                     weight_bytes=sum(k.weight_bytes for k in kernels), peak_activation_bytes=peak, unknown_ops=[])


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
