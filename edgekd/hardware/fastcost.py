"""Costing a candidate of a registered family without exporting it to ONNX.

The family is built at the candidate's width, depth and image size, moved to the meta device (shapes, no
data) and run once under a dispatch mode that records every ATen op the forward pass calls. Each op is
written as the node the dynamo ONNX exporter writes for it (BN folded into the conv before it, biases that
are all zeros dropped, SiLU as Sigmoid and Mul, ReLU6 as Clip, a linear layer as Gemm ...), with the traced
shapes as the graph's value_info, and the graph is costed by ``shaped_graph_cost``: the same per-kernel
records and runtime fusions as the ONNX path, which stays the reference (``tests/test_costing.py`` holds the
two together for every family) and the fallback for models edgekd cannot build itself. Costs are cached on
disk by (family, width, depth, input shape, classes, runtime, precision).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path

from edgekd.hardware.graph import GraphCost, Kernel, shaped_graph_cost

# ATen ops (overload packet names) that become one ONNX node of the same arity, by the ONNX op type.
_SAME_ARITY = {
    "relu": "Relu", "relu_": "Relu", "hardswish": "HardSwish", "hardswish_": "HardSwish",
    "hardsigmoid": "HardSigmoid", "hardsigmoid_": "HardSigmoid", "sigmoid": "Sigmoid", "sigmoid_": "Sigmoid",
    "tanh": "Tanh", "tanh_": "Tanh", "gelu": "Gelu", "elu": "Elu", "leaky_relu": "LeakyRelu",
    "leaky_relu_": "LeakyRelu", "add": "Add", "add_": "Add", "sub": "Sub", "sub_": "Sub", "mul": "Mul",
    "mul_": "Mul", "div": "Div", "div_": "Div", "cat": "Concat", "transpose": "Transpose", "permute": "Transpose",
    "avg_pool2d": "AveragePool", "softmax": "Softmax", "_softmax": "Softmax", "exp": "Exp", "sqrt": "Sqrt",
    "neg": "Neg", "abs": "Abs", "maximum": "Max", "minimum": "Min", "where": "Where",
}
# Views the exporter writes as Reshape (a runtime relabels the buffer).
_RESHAPES = frozenset({"view", "_unsafe_view", "reshape", "flatten", "squeeze", "unsqueeze", "expand_dims"})
# Ops the exporter removes: the output is the input (eval-mode dropout, copies into the same layout).
_IDENTITIES = frozenset({"clone", "contiguous", "detach", "alias", "lift_fresh", "dropout", "_to_copy"})
_FLOAT, _INT64 = 1, 7


class _Graph:
    """The ONNX graph being written: nodes, initializers (dims only), tensor shapes."""

    def __init__(self):
        import onnx

        self.onnx = onnx
        self.nodes: list = []
        self.inits: dict[str, tuple[list[int], int]] = {}
        self.shapes: dict[str, list[int]] = {}
        self.count = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def constant(self, dims, dtype: int = _FLOAT, stem: str = "const") -> str:
        name = self.fresh(stem)
        self.inits[name] = ([int(d) for d in dims], dtype)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outputs, name=outputs[0], **attrs))

    def proto(self, input_name: str, output_name: str):
        helper, onnx = self.onnx.helper, self.onnx
        inits = []
        for name, (dims, dtype) in self.inits.items():
            t = onnx.TensorProto(name=name, data_type=dtype)
            t.dims.extend(dims)
            inits.append(t)
        info = [helper.make_tensor_value_info(n, _FLOAT, s) for n, s in self.shapes.items()
                if n not in (input_name, output_name)]
        return helper.make_graph(self.nodes, "traced", [helper.make_tensor_value_info(input_name, _FLOAT,
                                 self.shapes[input_name])], [helper.make_tensor_value_info(
                                 output_name, _FLOAT, self.shapes[output_name])], initializer=inits, value_info=info)


class _Tracer:
    """Turns the ATen ops of one forward pass into ONNX nodes. Tensors are named by identity: weights by
    their parameter name, activations by the node that wrote them; anything computed from weights alone is
    a constant (the exporter folds it)."""

    def __init__(self, model, nonzero: set[str]):
        self.graph = _Graph()
        self.names: dict[int, str] = {}
        self.weights: dict[int, str] = {}
        self.keep: list = []              # holds traced tensors so that their ids stay unique
        self.producer: dict[str, object] = {}   # activation name -> the node that wrote it
        self.unhandled: list[str] = []
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            self.weights[id(t)] = name
            self.graph.inits[name] = (list(t.shape), _FLOAT)
            self.keep.append(t)
        self.nonzero = nonzero

    # --- naming ---

    def name_of(self, t) -> str | None:
        """The activation name of ``t`` (None for a weight or a constant)."""
        return self.names.get(id(t))

    def operand(self, t) -> str:
        """The name of a node input: an activation, a weight, or a new constant of ``t``'s shape."""
        import torch

        if isinstance(t, torch.Tensor):
            return self.names.get(id(t)) or self.weights.get(id(t)) or self._constant_of(t)
        return self.graph.constant([], stem="scalar")  # a Python number: a scalar initializer

    def _constant_of(self, t) -> str:
        name = self.graph.constant(list(t.shape))
        self.weights[id(t)] = name
        self.keep.append(t)
        return name

    def output(self, t, stem: str) -> str:
        name = self.graph.fresh(stem)
        self.names[id(t)] = name
        self.graph.shapes[name] = [int(d) for d in t.shape]
        self.keep.append(t)
        return name

    def has_bias(self, t) -> bool:
        return t is not None and self.weights.get(id(t)) in self.nonzero

    # --- recording ---

    def record(self, op: str, args, out) -> None:
        import torch

        tensors = [a for a in _flat(args) if isinstance(a, torch.Tensor)]
        if not any(id(a) in self.names for a in tensors):
            self._fold_constant(op, args, out)
            return
        handler = _HANDLERS.get(op)
        if handler is not None:
            handler(self, args, out)
        elif op in _SAME_ARITY:
            inputs = [self.operand(a) for a in _flat(args) if isinstance(a, (torch.Tensor, int, float))
                      and not isinstance(a, bool)]
            if op in ("transpose", "permute", "cat", "softmax", "_softmax"):
                inputs = [self.operand(a) for a in _flat(args[:1]) if isinstance(a, torch.Tensor)]
            self.graph.node(_SAME_ARITY[op], inputs, [self.output(_first(out), op)])
        elif op in _IDENTITIES or op in _RESHAPES:
            self._relabel(op, args, out)
        else:
            self.unhandled.append(op)
            acts = [self.operand(a) for a in tensors]
            self.graph.node(op, acts, [self.output(_first(out), op)])

    def _fold_constant(self, op: str, args, out) -> None:
        """An op on weights only: a view of one weight keeps its name (``t(W)`` of a linear layer is ``W``
        with transB), anything else is a new constant."""
        import torch

        first = args[0] if args else None
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                if op in ("t", "detach", "view", "alias", "permute", "transpose") and id(first) in self.weights:
                    self.weights[id(t)] = self.weights[id(first)]
                    self.keep.append(t)
                else:
                    self._constant_of(t)

    def _relabel(self, op: str, args, out) -> None:
        src = self.names[id(args[0])]
        if op in _IDENTITIES:
            self.names[id(out)] = src
            self.keep.append(out)
            return
        shape = self.graph.constant([len(out.shape)], _INT64, "shape")
        self.graph.node("Reshape", [src, shape], [self.output(out, "view")])


def _flat(args) -> list:
    out = []
    for a in args:
        out.extend(_flat(a) if isinstance(a, (list, tuple)) else [a])
    return out


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _conv(tr: _Tracer, args, out) -> None:
    x, w, b, stride, padding, dilation, transposed, _, groups = args[:9]
    inputs = [tr.operand(x), tr.operand(w)] + ([tr.operand(b)] if tr.has_bias(b) else [])
    name = tr.output(out, "conv")
    tr.graph.node("ConvTranspose" if transposed else "Conv", inputs, [name],
                  group=int(groups), kernel_shape=[int(k) for k in w.shape[2:]], strides=[int(s) for s in stride],
                  pads=[int(p) for p in padding] * 2, dilations=[int(d) for d in dilation])
    tr.producer[name] = tr.graph.nodes[-1]


def _batch_norm(tr: _Tracer, args, out) -> None:
    """Folded into the conv that wrote its input (the exporter's optimizer does; a bias appears only
    where the BN's shift is not zero); a BatchNormalization node elsewhere."""
    x, weight, bias, mean = args[0], args[1], args[2], args[3]
    y = _first(out)
    src = tr.name_of(x)
    conv = tr.producer.get(src)
    if conv is not None:
        tr.names[id(y)] = src
        tr.keep.append(y)
        if (tr.has_bias(bias) or tr.has_bias(mean)) and len(conv.input) == 2:
            conv.input.append(tr.graph.constant([int(x.shape[1])], stem="bias"))
        return
    inputs = [src] + [tr.operand(t) for t in (weight, bias, mean, args[4])]
    tr.graph.node("BatchNormalization", inputs, [tr.output(y, "batch_norm")])


def _clip(tr: _Tracer, args, out) -> None:
    low, high = tr.graph.constant([], stem="min"), tr.graph.constant([], stem="max")
    tr.graph.node("Clip", [tr.operand(args[0]), low, high], [tr.output(out, "hardtanh")])


def _silu(tr: _Tracer, args, out) -> None:
    x = tr.operand(args[0])
    sig = tr.graph.fresh("sigmoid")
    tr.graph.shapes[sig] = [int(d) for d in out.shape]
    tr.graph.node("Sigmoid", [x], [sig])
    tr.graph.node("Mul", [x, sig], [tr.output(out, "silu")])


def _reduce(onnx_op: str):
    def handler(tr: _Tracer, args, out) -> None:
        dims = args[1] if len(args) > 1 and args[1] is not None else list(range(args[0].dim()))
        axes = tr.graph.constant([len(dims) if isinstance(dims, (list, tuple)) else 1], _INT64, "axes")
        tr.graph.node(onnx_op, [tr.operand(args[0]), axes], [tr.output(_first(out), "mean")])
    return handler


def _gemm(tr: _Tracer, args, out) -> None:
    """addmm(bias, x, W^T) or mm(x, W^T): a Gemm with the layer's own (out, in) weight."""
    bias, x, w = (args[0], args[1], args[2]) if len(args) >= 3 else (None, args[0], args[1])
    if tr.name_of(w) is not None:   # a product of two activations
        tr.graph.node("MatMul", [tr.operand(x), tr.operand(w)], [tr.output(out, "matmul")])
        return
    inputs = [tr.operand(x), tr.operand(w)] + ([tr.operand(bias)] if tr.has_bias(bias) else [])
    tr.graph.node("Gemm", inputs, [tr.output(out, "linear")], transB=1)


def _max_pool(tr: _Tracer, args, out) -> None:
    x, kernel = args[0], list(args[1])
    stride = list(args[2]) if len(args) > 2 and args[2] else kernel
    padding = list(args[3]) if len(args) > 3 else [0, 0]
    tr.graph.node("MaxPool", [tr.operand(x)], [tr.output(_first(out), "max_pool2d")], kernel_shape=kernel,
                  strides=stride, pads=padding * 2)


def _split(tr: _Tracer, args, out) -> None:
    names = [tr.output(t, "split") for t in out]
    tr.graph.node("Split", [tr.operand(args[0])], names)


_HANDLERS = {
    "convolution": _conv, "_native_batch_norm_legit_no_training": _batch_norm, "native_batch_norm": _batch_norm,
    "batch_norm": _batch_norm, "hardtanh": _clip, "hardtanh_": _clip, "silu": _silu, "silu_": _silu,
    "mean": _reduce("ReduceMean"), "amax": _reduce("ReduceMax"), "sum": _reduce("ReduceSum"),
    "addmm": _gemm, "mm": _gemm, "max_pool2d_with_indices": _max_pool, "max_pool2d": _max_pool,
    "split": _split, "split_with_sizes": _split, "unbind": _split,
}


def trace_graph(model, input_shape, nonzero: set[str] | None = None):
    """The ONNX GraphProto (shapes in value_info, initializers without data) the dynamo exporter would
    write for ``model`` (eval mode) on a batch of ``input_shape``, and the ATen ops it had no rule for (kept
    under their own names, costed as unknown ops). ``nonzero``: the names of the 1-D weights that are not all
    zeros (biases the exporter keeps; default: read from ``model``). Moves ``model`` to the meta device."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    model = model.eval()
    if nonzero is None:
        nonzero = nonzero_vectors(model)
    model = model.to("meta")
    tracer = _Tracer(model, nonzero)
    x = torch.empty(tuple(int(s) for s in input_shape), device="meta")
    tracer.names[id(x)] = "input"
    tracer.graph.shapes["input"] = [int(s) for s in input_shape]

    class Record(TorchDispatchMode):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            return False   # nothing here is compiled: wrapping for Dynamo would import it (seconds)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            op = func.overloadpacket.__name__
            out = _shape_only(op, args)
            if out is None:
                out = func(*args, **(kwargs or {}))
            tracer.record(op, args, out)
            return out

    with torch.no_grad(), Record():
        y = model(x)
    return tracer.graph.proto("input", tracer.name_of(y)), tracer.unhandled


def nonzero_vectors(model) -> set[str]:
    """Names of the model's 1-D float weights that are not all zeros."""
    return {n for n, t in [*model.named_parameters(), *model.named_buffers()]
            if t.dim() == 1 and t.is_floating_point() and bool(t.any())}


def build_uninitialised(arch: str, **kw):
    """``edgekd.models.create(arch, **kw)`` with the parameters' random initialisation skipped (their
    memory is left as allocated): building a wide candidate is then as fast as a narrow one. Only for
    tracing shapes; which biases are zero comes from an initialised build (:func:`nonzero_vectors`)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from edgekd.models import create

    class SkipInit(TorchDispatchMode):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            return False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            target = args[0] if args else None
            if (func.overloadpacket.__name__.endswith("_") and isinstance(target, torch.Tensor)
                    and target.requires_grad):  # an in-place fill of a parameter: an initialiser
                return target
            return func(*args, **(kwargs or {}))

    with SkipInit():
        return create(arch, **kw)


_UNARY = frozenset({"relu", "hardswish", "hardsigmoid", "sigmoid", "silu", "hardtanh", "tanh", "gelu", "elu",
                    "leaky_relu", "exp", "neg", "abs", "sqrt"})
_BINARY = frozenset({"add", "sub", "mul", "div"})


def _shape_only(op: str, args):
    """The output of the most frequent ops as empty meta tensors of the right shape, computed here: PyTorch's
    meta kernels for them are Python decompositions, ten times slower than the rest of the trace. None:
    let PyTorch compute it."""
    import torch

    x = args[0] if args else None
    base = op[:-1] if op.endswith("_") else op
    if not isinstance(x, torch.Tensor) or (base not in _UNARY and base not in _BINARY and op not in _SHAPES):
        return None
    if base != op:                                   # in place: the op returns its first argument
        return x
    if base in _UNARY:
        return torch.empty_like(x)
    if base in _BINARY:
        other = args[1] if len(args) > 1 else None
        shape = torch.broadcast_shapes(x.shape, other.shape) if isinstance(other, torch.Tensor) else x.shape
        return torch.empty(shape, device="meta")
    return _SHAPES[op](*args)


def _conv_shape(x, w, b, stride, padding, dilation, transposed, output_padding, groups):
    import torch

    sizes = []
    for i, size in enumerate(x.shape[2:]):
        k, s, p, d = int(w.shape[2 + i]), int(stride[i]), int(padding[i]), int(dilation[i])
        sizes.append((size - 1) * s - 2 * p + d * (k - 1) + int(output_padding[i]) + 1 if transposed
                     else (size + 2 * p - d * (k - 1) - 1) // s + 1)
    cout = int(w.shape[1]) * int(groups) if transposed else int(w.shape[0])
    return torch.empty((x.shape[0], cout, *sizes), device="meta")


def _bn_shape(x, *args):
    import torch

    return torch.empty_like(x), torch.empty(0, device="meta"), torch.empty(0, device="meta")


def _mean_shape(x, dims=None, keepdim=False, *args):
    import torch

    axes = {d % x.dim() for d in (dims if dims else range(x.dim()))}
    shape = [1 if i in axes else n for i, n in enumerate(x.shape) if keepdim or i not in axes]
    return torch.empty(shape, device="meta")


_SHAPES = {"convolution": _conv_shape, "mean": _mean_shape, "_native_batch_norm_legit_no_training": _bn_shape,
           "native_batch_norm": _bn_shape}


_TRACED: dict[str, tuple] = {}   # one search costs a graph at several precisions: trace it once per process
_NONZERO: dict[str, set] = {}


def fast_cost(arch: str, *, num_classes: int, input_shape, width: float, depth: float, runtime: str,
              precision: str) -> tuple[GraphCost, int]:
    """(GraphCost, parameter count) of a registered family's candidate on ``runtime`` at ``precision``:
    what ``graph_cost`` gives for its exported graph, without the export. Cached on disk."""
    import torch

    from edgekd.version import __version__
    from edgekd.hardware.graph import BYTES_PER_ELEMENT, fusions_for
    from edgekd.hardware.targets import cache_dir
    from edgekd.models import count_params, create, create_kwargs, family_traits

    shape = [1, *[int(s) for s in input_shape[-3:]]]
    fusions_for(runtime)
    if precision not in BYTES_PER_ELEMENT:
        from edgekd.errors import EdgeKDError

        raise EdgeKDError(f"unknown precision {precision!r}", f"use one of {', '.join(BYTES_PER_ELEMENT)}")
    graph_key = json.dumps({"arch": arch, "classes": int(num_classes), "shape": shape, "width": float(width),
                            "depth": float(depth), "torch": torch.__version__, "edgekd": __version__}, sort_keys=True)
    rules = json.dumps({k: sorted(v) if isinstance(v, frozenset) else v for k, v in vars(fusions_for(runtime)).items()},
                       sort_keys=True)  # sorted: a frozenset's order changes with each process's hash seed
    key = hashlib.sha256(f"{graph_key}|{runtime}|{precision}|{rules}|{cost_rules_digest()}".encode()).hexdigest()[:20]
    path = cache_dir() / "costs" / f"{arch}-w{width:g}-d{depth:g}-{'x'.join(map(str, shape))}-{key}.json"
    cached = _read(path)
    if cached is not None:
        return cached
    if graph_key not in _TRACED:
        kw = dict(num_classes=num_classes, in_channels=shape[1], depth=depth, **create_kwargs(arch, shape))
        zeros_key = json.dumps([arch, kw], sort_keys=True)
        if zeros_key not in _NONZERO:   # which biases are zeros depends on the layers, not on their width
            _NONZERO[zeros_key] = nonzero_vectors(create(arch, width=min(family_traits(arch).widths), **kw))
        model = build_uninitialised(arch, width=width, **kw)
        _TRACED[graph_key] = (trace_graph(model, shape, _NONZERO[zeros_key])[0], count_params(model))
    graph, params = _TRACED[graph_key]
    while len(_TRACED) > 8:   # a search walks its grid in order: the oldest graphs are done with
        _TRACED.pop(next(iter(_TRACED)))
    cost = shaped_graph_cost(graph, runtime=runtime, precision=precision)
    record = {k: v for k, v in vars(cost).items() if k != "kernels"}
    _write(path, {"params": params, "cost": {**record, "kernels": [vars(k) for k in cost.kernels]}})
    return cost, params


@functools.lru_cache(maxsize=1)
def cost_rules_digest() -> str:
    """A digest of the code that turns a traced graph into kernels and costs (graph costing, the runtimes'
    fusions and kernel-library rules, this module): an entry cached under other rules is never read, so a
    new rule (ncnn's Winograd convs, say) reaches costs cached before it without a version bump."""
    from edgekd.hardware import graph, libraries
    from edgekd.runtimes import base

    digest = hashlib.sha256()
    for module in (graph, libraries, base, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _write(path: Path, record: dict) -> None:
    """Write a cache entry atomically (a reader sees the old file or the new one); without the fsync of
    ``atomic_write_json``: a cost lost in a crash is only computed again."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> tuple[GraphCost, int] | None:
    """A cached cost, or None when it is missing or unreadable (then it is costed again)."""
    try:
        d = json.loads(path.read_text())
        cost = dict(d["cost"])
        kernels = [Kernel(**k) for k in cost.pop("kernels")]
        return GraphCost(kernels=kernels, **cost), int(d["params"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
