"""Facts about model files on disk: input shape, precision, parameter count and the files that ship.

One home for what the gate, ``edgekd bench`` and the latency model read from ONNX files and OpenVINO
IRs, so that all of them agree on what a file is: which shape it takes (and which it cannot), whether it
is INT8, FP16 or FP32, how many weights it has, and which files must be copied with it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from edgekd.errors import EdgeKDError, first_line

# Largest dimension and input a shape may have: ONNX Runtime and TensorRT index tensors with 32-bit
# integers in places, and a larger input is a typo (or an attack), not a model to cost or time.
MAX_DIM = 2**31 - 1
MAX_INPUT_ELEMENTS = 2**31 - 1

_ONNX_FIX = "pass a .onnx file exported by edgekd or torch.onnx"
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_INT8_OPS = _QDQ_OPS | {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
# Inputs that hold quantization scales and zero points, by operator (ONNX operator specs).
_QUANT_PARAM_INPUTS = {
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2),
    "MatMulInteger": (2, 3), "ConvInteger": (2, 3),
    "QLinearConv": (1, 2, 4, 5, 6, 7), "QLinearMatMul": (1, 2, 4, 5, 6, 7),
}


# --- shapes ------------------------------------------------------------------------------------------

def parse_shape(text: str, what: str = "--input-shape") -> tuple[int, ...]:
    """'1,1,28,28', '1x1x28x28' or '1 x 28 x 28' -> (1, 1, 28, 28); positive dimensions of sane size."""
    words = str(text).lower().replace("x", ",").split(",")
    try:
        dims = tuple(int(w) for w in words if w.strip())
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise EdgeKDError(f"bad input shape {text!r} for {what}",
                          f"write it as N,C,H,W (or NxCxHxW) with positive sizes, e.g. {what} 1,1,28,28")
    check_shape(dims, what)
    return dims


def check_shape(dims, what: str = "input shape") -> tuple[int, ...]:
    """Refuse dimensions and inputs too large for any runtime (their FLOPs would overflow, their buffers fail)."""
    dims = tuple(int(d) for d in dims)
    big = next((d for d in dims if d > MAX_DIM), None)
    if big is not None:
        raise EdgeKDError(f"{what} {'x'.join(map(str, dims))} has a dimension of {big}, over {MAX_DIM}",
                          "pass the model's real input shape, e.g. 1x3x224x224")
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise EdgeKDError(f"{what} {'x'.join(map(str, dims))} has {math.prod(dims):,} elements, "
                          f"over {MAX_INPUT_ELEMENTS:,}", "pass the model's real input shape, e.g. 1x3x224x224")
    return dims


def resolve_shape(model_dims, given=None, *, name: str = "the model") -> tuple[int, ...]:
    """The concrete input shape to run or cost: ``model_dims`` (ints, None where dynamic) filled in.

    Without ``given``, a dynamic batch is 1 (one image, as reports time) and any other dynamic dimension
    is an error. ``given`` may drop the batch (C,H,W means batch 1); it must have the model's rank and
    agree with every static dimension: a shape the model cannot take is refused here, not costed.
    """
    model_dims = list(model_dims)
    if given is None:
        dims = []
        for i, d in enumerate(model_dims):
            if d is not None:
                dims.append(int(d))
            elif i == 0:
                dims.append(1)
            else:
                raise EdgeKDError(f"input dimension {i} of {name} is dynamic",
                                  "pass the full input shape (N,C,H,W), e.g. 1,3,224,224")
        return check_shape(dims)
    given = [int(d) for d in given]
    if model_dims and len(given) == len(model_dims) - 1:
        given = [1, *given]
    if model_dims and len(given) != len(model_dims):
        raise EdgeKDError(f"input shape {'x'.join(map(str, given))} has {len(given)} dimensions; "
                          f"{name}'s input has {len(model_dims)}", "pass all of them, e.g. 1,1,28,28")
    for i, (want, got) in enumerate(zip(model_dims, given)):
        if want is not None and want != got:
            takes = "x".join("?" if d is None else str(d) for d in model_dims)
            raise EdgeKDError(f"{name} takes input {takes}, not {'x'.join(map(str, given))} (dimension {i} is fixed "
                              f"at {want})", f"pass a shape that matches the model, or re-export it for {got}")
    if any(d < 1 for d in given):
        raise EdgeKDError(f"input shape {'x'.join(map(str, given))} has a dimension below 1",
                          "pass positive sizes, e.g. 1,1,28,28")
    return check_shape(given)


# --- ONNX --------------------------------------------------------------------------------------------

def load_onnx(path: str | os.PathLike, *, external_data: bool = False):
    """An ONNX ModelProto (external data left on disk unless asked for); a one-line error for anything else."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise EdgeKDError(f"ONNX file {path} does not exist", "check the path")
    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError, RecursionError) as err:
        raise EdgeKDError(f"{path} is not an ONNX model ({first_line(err, with_type=True)})", _ONNX_FIX) from None
    # Protobuf happily parses many non-ONNX byte strings into an empty message.
    if model.ir_version <= 0 or len(model.graph.node) == 0:
        raise EdgeKDError(f"{path} is not an ONNX model (no graph)", _ONNX_FIX)
    return model


def _as_onnx(model_or_path):
    return model_or_path if hasattr(model_or_path, "graph") else load_onnx(model_or_path)


def onnx_input(model):
    """The single image input of an ONNX graph (initializers listed as inputs are weights, not inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise EdgeKDError(f"the model has {len(inputs)} inputs; edgekd times and costs single-input image models",
                          "export the model with one image input, or gate the run folder's report.json")
    return inputs[0]


def onnx_input_dims(model) -> list[int | None]:
    """The input's dimensions: ints where static, None where dynamic."""
    dims = onnx_input(model).type.tensor_type.shape.dim
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def all_tensors(graph):
    """Initializers and constant tensors of a graph and its subgraphs (If/Loop bodies)."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_tensors(g)


def onnx_param_count(model_or_path) -> int:
    """Weights in an ONNX model: elements of its initializers, not counting quantization scales and
    zero points (bookkeeping, not parameters) nor integer shape constants (int64 for Reshape etc.),
    so an INT8 export has the same count as its FP32 source."""
    import onnx

    model = _as_onnx(model_or_path)
    bookkeeping = set()
    dynamic_scales = set()  # DynamicQuantizeLinear's activation scale: the weight scale is Mul'ed onto it
    for node in model.graph.node:
        bookkeeping.update(node.input[i] for i in _QUANT_PARAM_INPUTS.get(node.op_type, ()) if i < len(node.input))
        if node.op_type == "DynamicQuantizeLinear" and len(node.output) > 1:
            dynamic_scales.add(node.output[1])
    for node in model.graph.node:
        if node.op_type == "Mul" and dynamic_scales & set(node.input):
            bookkeeping.update(node.input)
    total = 0
    for tensor in model.graph.initializer:
        if tensor.name in bookkeeping or tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.BOOL):
            continue
        total += math.prod(tensor.dims)
    return total


def onnx_precision(model_or_path) -> str:
    """'int8' for a quantized (QDQ / QOperator) graph, 'fp16' for half weights, else 'fp32'."""
    import onnx

    model = _as_onnx(model_or_path)
    if {n.op_type for n in model.graph.node} & _INT8_OPS:
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def onnx_external_files(path: Path, model) -> list[Path]:
    """The external-data files an ONNX file references, in first-use order; missing ones are an error."""
    from onnx.external_data_helper import uses_external_data

    locations: list[str] = []
    for tensor in all_tensors(model.graph):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location and location not in locations:
                locations.append(location)
    files = []
    for location in locations:
        data = (path.parent / location).resolve()
        if path.parent.resolve() not in data.parents or not data.is_file():
            raise EdgeKDError(f"external data file {location!r} referenced by {path} is missing",
                              "keep the external-data files next to the .onnx file")
        files.append(path.parent / location)
    return files


# --- OpenVINO IR -------------------------------------------------------------------------------------

def read_openvino(path: str | os.PathLike):
    from edgekd.offline import openvino_core

    path = Path(path)
    if not path.with_suffix(".bin").is_file():
        raise EdgeKDError(f"OpenVINO weights {path.with_suffix('.bin')} for {path} are missing",
                          "keep the .bin file next to the .xml file")
    try:
        return openvino_core().read_model(str(path))
    except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of many kinds
        raise EdgeKDError(f"{path} is not an OpenVINO IR ({first_line(err)})",
                          "pass the .xml written by openvino.save_model, with its .bin") from None


def openvino_input_dims(model) -> list[int | None]:
    if len(model.inputs) != 1:
        raise EdgeKDError(f"the model has {len(model.inputs)} inputs; edgekd times and costs single-input image models",
                          "export the model with one image input")
    return [d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()]


def openvino_param_count(path: str | os.PathLike) -> int:
    """Weights in an OpenVINO IR, counted like :func:`onnx_param_count`: every weight constant once
    (an FP16 or INT8 weight and its Convert are one tensor), not counting FakeQuantize ranges,
    dequantization scales and zero points, or shape constants."""
    from edgekd.offline import import_openvino

    ov = import_openvino()

    model = read_openvino(path)
    integer = {ov.Type.i64, ov.Type.i32, ov.Type.u64, ov.Type.u32, ov.Type.boolean}
    total = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        out = op.output(0)
        consumers = [(t.get_node(), t.get_index()) for t in out.get_target_inputs()]
        if out.get_element_type() in integer:
            # Integer constants are shapes and axes, except quantized int32 biases on their way to a Convert.
            if not any(node.get_type_name() == "Convert" for node, _ in consumers):
                continue
        elif consumers and all(_is_quantization_param(node, index) for node, index in consumers):
            continue
        total += math.prod(out.get_shape())
    return total


def _is_quantization_param(node, index: int) -> bool:
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return index >= 1  # input/output ranges
    if kind in ("Multiply", "Subtract") and node.get_input_size() == 2:
        # Weight decompression: Constant(int8) -> Convert -> [Subtract zero point] -> Multiply scale.
        other = node.input_value(1 - index).get_node()
        return other.get_type_name() in ("Convert", "Subtract") and index == 1
    return False


def openvino_precision(path: str | os.PathLike) -> str:
    """From the IR's text: FakeQuantize or 8-bit elements mean int8, half elements fp16."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if "FakeQuantize" in text or 'element_type="i8"' in text or 'element_type="u8"' in text:
        return "int8"
    if 'element_type="f16"' in text:
        return "fp16"
    return "fp32"


# --- any model file ----------------------------------------------------------------------------------

def check_readable(path: str | os.PathLike) -> Path:
    """Refuse an ONNX file or OpenVINO IR that does not parse (other formats are checked by their runtime)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        load_onnx(path)
    elif suffix == ".xml":
        read_openvino(path)
    return Path(path)


def input_dims(path: str | os.PathLike) -> list[int | None] | None:
    """The input dimensions of an ONNX or OpenVINO file (None where dynamic); None for other files."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return onnx_input_dims(load_onnx(path))
    if suffix == ".xml":
        return openvino_input_dims(read_openvino(path))
    return None


def input_shape(path: str | os.PathLike, given=None) -> tuple[int, ...] | None:
    """The concrete N,C,H,W a file runs at (see :func:`resolve_shape`); None when the file cannot say."""
    dims = input_dims(path)
    if dims is None:
        return check_shape(given) if given is not None else None
    return resolve_shape(dims, given, name=Path(path).name)


def image_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """(C, H, W) of a file's input when all three are static; None otherwise (the caller asks for it)."""
    try:
        dims = input_dims(path)
    except EdgeKDError:
        return None
    chw = tuple(dims[1:]) if dims else ()
    return chw if len(chw) == 3 and all(isinstance(d, int) and d > 0 for d in chw) else None


def precision(path: str | os.PathLike) -> str:
    """fp32 / fp16 / int8 of a model file, from its content; other files by the tag in their name."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return onnx_precision(path)
    if suffix == ".xml":
        return openvino_precision(path)
    return next((tag for tag in ("int8", "fp16", "fp32") if tag in path.name.lower()), "fp32")


def param_count(path: str | os.PathLike) -> int | None:
    """Weights of an ONNX file or an OpenVINO IR; None for formats whose weights edgekd cannot count."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return onnx_param_count(path)
    if suffix == ".xml":
        return openvino_param_count(path)
    return None


def shipped_files(path: str | os.PathLike, *, strict: bool = True) -> list[Path]:
    """Every file that ships with a model: an ONNX file plus its external-data files, an OpenVINO .xml
    plus its .bin, every file of a model folder, otherwise the file itself.

    ``strict=False`` counts what is there instead of failing on a missing companion (bench rows of
    files that then fail to load)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if not path.is_file():
        raise EdgeKDError(f"model file {path} does not exist", "check the path, or gate the run folder's report.json")
    suffix = path.suffix.lower()
    try:
        if suffix == ".onnx":
            return [path, *onnx_external_files(path, load_onnx(path))]
        if suffix == ".xml":
            weights = path.with_suffix(".bin")
            if not weights.is_file():
                raise EdgeKDError(f"OpenVINO weights {weights} for {path} are missing",
                                  "keep the .bin file next to the .xml file")
            return [path, weights]
    except EdgeKDError:
        if strict:
            raise
    return [path]


def size_bytes(path: str | os.PathLike, *, strict: bool = True) -> int:
    """Bytes that ship: the model plus its external data or weights (see :func:`shipped_files`)."""
    return sum(p.stat().st_size for p in shipped_files(path, strict=strict))
