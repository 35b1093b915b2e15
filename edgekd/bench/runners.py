"""One runner per inference runtime: load a model file, run float32 NCHW batches, return logits."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.registry import Registry

RUNTIMES: Registry = Registry("runtime")


def _module_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - a missing distribution just has no version to report
        return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Runner:
    """Base class: subclasses load ``path`` in ``__init__`` and implement ``_run`` for one batch.

    ``run`` checks the input once for every runtime and splits batches larger than what the loaded
    model accepts (ExecuTorch and TensorRT models have a bounded batch dimension).
    """

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""
    modules: ClassVar[tuple[str, ...]] = ()

    #: largest batch one call accepts (None: unbounded)
    max_batch: int | None = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        missing = [m for m in cls.modules if not _importable(m)]
        if missing:
            return False, f"{missing[0]} is not importable: {cls.install_hint}"
        return True, "ok"

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, device: str = "cpu"):
        self.path = Path(path)
        self.threads = threads
        self.device = device
        ok, why = self.available()
        if not ok:
            raise EdgeKDError(f"cannot run {self.path.name} with {self.name}: {why}")
        if not self.path.is_file():
            raise EdgeKDError(f"model file {self.path} does not exist", "check the path or re-run the export")

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim != 4:
            raise EdgeKDError(
                f"{self.name} runner expects a float32 NCHW batch, got {x.dtype} with shape {x.shape}",
                "normalise the images to float32 (N, C, H, W) first",
            )
        x = np.ascontiguousarray(x)
        limit = self.max_batch
        if limit is None or len(x) <= limit:
            return np.asarray(self._run(x), dtype=np.float32)
        return np.concatenate([np.asarray(self._run(x[i:i + limit]), dtype=np.float32)
                               for i in range(0, len(x), limit)])

    __call__ = run

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def versions(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {"runtime": self.name, "path": str(self.path), "threads": self.threads,
                "device": self.device, **self.versions()}


@RUNTIMES.register("pytorch")
class PyTorchRunner(Runner):
    """PyTorch eager: an edgekd safetensors checkpoint, or an ``nn.Module`` via :meth:`from_module`."""

    name = "pytorch"
    suffixes = (".safetensors",)
    modules = ("torch",)
    install_hint = "pip install torch"

    def __init__(self, path, *, threads=None, device="cpu"):
        super().__init__(path, threads=threads, device=device)
        from edgekd.models import load_model

        module, _spec, _meta = load_model(self.path)
        self._setup(module)

    @classmethod
    def from_module(cls, module, *, threads: int | None = None, device: str = "cpu") -> "PyTorchRunner":
        self = cls.__new__(cls)
        self.path = Path("<module>")
        self.threads, self.device = threads, device
        self._setup(module)
        return self

    def _setup(self, module) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        self.module = module.eval().to(self.device)

    def _run(self, x):
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def versions(self):
        import torch

        return {"torch": torch.__version__}


@RUNTIMES.register("onnxruntime")
class OnnxRuntimeRunner(Runner):
    """ONNX Runtime: ``.onnx`` and ``.ort`` files; CPU, or CUDA / TensorRT execution providers on a GPU."""

    name = "onnxruntime"
    suffixes = (".onnx", ".ort")
    modules = ("onnxruntime",)
    install_hint = "pip install onnxruntime"

    def __init__(self, path, *, threads=None, device="cpu"):
        super().__init__(path, threads=threads, device=device)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # One model, one request at a time: parallelism within ops, not between them.
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            gpu = [p for p in ("CUDAExecutionProvider",) if p in available]
            if not gpu:
                raise EdgeKDError("onnxruntime has no CUDA execution provider here",
                                  "pip install onnxruntime-gpu, or use --device cpu")
            providers = gpu + providers
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as err:  # noqa: BLE001 - ORT raises several unrelated types for bad files
            raise EdgeKDError(f"onnxruntime cannot load {self.path}: {_first_line(err)}",
                              "re-export the model; the file may be truncated or from a newer opset") from None
        self.input_name = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.max_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.providers = self.session.get_providers()

    def _run(self, x):
        return self.session.run(None, {self.input_name: x})[0]

    def versions(self):
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "providers": self.providers}


@RUNTIMES.register("openvino")
class OpenVINORunner(Runner):
    """OpenVINO on CPU: an IR ``.xml`` (with its ``.bin``) or an ``.onnx`` file."""

    name = "openvino"
    suffixes = (".xml",)
    modules = ("openvino",)
    install_hint = "pip install openvino"

    def __init__(self, path, *, threads=None, device="cpu", precision_hint: str | None = "f32"):
        super().__init__(path, threads=threads, device=device)
        import openvino as ov

        if self.path.suffix == ".xml" and not self.path.with_suffix(".bin").is_file():
            raise EdgeKDError(f"{self.path.with_suffix('.bin')} is missing beside {self.path.name}",
                              "an OpenVINO IR is an .xml and a .bin; copy both")
        config: dict = {}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        # CPUs with bf16 units (AVX512-BF16, AMX) run FP32/FP16 IRs in bf16 by default, which hides
        # the artifact's real numerics; f32 keeps parity and accuracy honest. INT8 layers stay INT8.
        if precision_hint:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        self.precision_hint = precision_hint
        ov_device = "GPU" if device.startswith("cuda") or device.upper() == "GPU" else "CPU"
        try:
            self.compiled = ov.Core().compile_model(str(self.path), ov_device, config)
        except Exception as err:  # noqa: BLE001
            raise EdgeKDError(f"openvino cannot load {self.path}: {_first_line(err)}",
                              "re-export the model; the .xml/.bin may be truncated") from None
        self.request = self.compiled.create_infer_request()

    def _run(self, x):
        return self.request.infer({0: x})[self.compiled.output(0)]

    def versions(self):
        import openvino as ov

        return {"openvino": ov.get_version(), "precision_hint": self.precision_hint}


@RUNTIMES.register("executorch")
class ExecuTorchRunner(Runner):
    """ExecuTorch ``.pte`` programs (XNNPACK delegate) through ``executorch.runtime``."""

    name = "executorch"
    suffixes = (".pte",)
    modules = ("executorch",)
    install_hint = "pip install executorch (the mobile runtime for Android and iOS)"

    def __init__(self, path, *, threads=None, device="cpu"):
        super().__init__(path, threads=threads, device=device)
        import torch
        from executorch.runtime import Runtime

        if threads:
            from executorch.extension.pybindings import portable_lib

            # XNNPACK uses ExecuTorch's process-wide thread pool; resizing it is the only knob.
            portable_lib._unsafe_reset_threadpool(int(threads))
        try:
            program = Runtime.get().load_program(self.path)
            self.method = program.load_method("forward")
            # Memory is planned for the batch bound chosen at export; larger batches are split.
            sizes = program.metadata("forward").input_tensor_meta(0).sizes()
        except Exception as err:  # noqa: BLE001
            raise EdgeKDError(f"executorch cannot load {self.path}: {_first_line(err)}",
                              "re-export the .pte; it may be truncated or built by another ExecuTorch version") from None
        self._torch = torch
        self.max_batch = int(sizes[0]) if sizes else None

    def _run(self, x):
        out = self.method.execute([self._torch.from_numpy(x)])
        return out[0].numpy()

    def versions(self):
        return {"executorch": _module_version("executorch")}


@RUNTIMES.register("tensorrt")
class TensorRTRunner(Runner):
    """TensorRT engines (``.engine``) on an NVIDIA GPU; device buffers through torch.cuda."""

    name = "tensorrt"
    suffixes = (".engine", ".plan")
    modules = ("tensorrt",)
    install_hint = "pip install 'edgekd[tensorrt]' on a machine with an NVIDIA GPU"

    @classmethod
    def available(cls):
        ok, why = super().available()
        if not ok:
            return ok, why
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible: TensorRT engines run only on an NVIDIA GPU"
        return True, "ok"

    def __init__(self, path, *, threads=None, device="cuda"):
        super().__init__(path, threads=threads, device="cuda")
        import tensorrt as trt
        import torch

        from edgekd.export.to_tensorrt import check_engine_tag

        check_engine_tag(self.path)
        self._torch = torch
        self.logger = trt.Logger(trt.Logger.ERROR)
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EdgeKDError(f"tensorrt cannot deserialize {self.path}",
                              "rebuild the engine on this device; engines are tied to a TensorRT version and GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        # The optimisation profile's max batch bounds what one call may take.
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.stream = torch.cuda.Stream()

    def _run(self, x):
        torch = self._torch
        inp = torch.from_numpy(x).cuda()
        self.context.set_input_shape(self.input_name, tuple(inp.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, inp.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        with torch.cuda.stream(self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return out.cpu().numpy()

    def versions(self):
        import tensorrt as trt

        return {"tensorrt": trt.__version__}


@RUNTIMES.register("litert")
class LiteRTRunner(Runner):
    """LiteRT (TFLite) ``.tflite`` flatbuffers through the ai-edge-litert interpreter (XNNPACK on CPU)."""

    name = "litert"
    suffixes = (".tflite",)
    modules = ("ai_edge_litert",)
    install_hint = "pip install ai-edge-litert"

    def __init__(self, path, *, threads=None, device="cpu"):
        super().__init__(path, threads=threads, device=device)
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except Exception as err:  # noqa: BLE001
            raise EdgeKDError(f"litert cannot load {self.path}: {_first_line(err)}",
                              "re-export the .tflite; it may be truncated") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        # converted graphs have a static batch (1); Runner.run splits larger batches
        self.max_batch = int(self.input["shape"][0]) or None

    def _run(self, x):
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).copy()

    def versions(self):
        return {"litert": _module_version("ai-edge-litert")}


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    line = next((ln.strip() for ln in text if ln.strip()), type(err).__name__)
    return line[:limit]


def runtime_for_file(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    for name, cls in RUNTIMES.items():
        if suffix in cls.suffixes:
            return name
    known = sorted({s for _, cls in RUNTIMES.items() for s in cls.suffixes})
    raise EdgeKDError(f"no runtime runs {suffix or 'suffix-less'} files ({Path(path).name})",
                      f"pass a model file ending in one of {', '.join(known)}")


def load_runner(path_or_artifact, threads: int | None = None, *, device: str = "cpu",
                runtime: str | None = None) -> Runner:
    """A runner for a model file (runtime chosen by suffix) or an export Artifact (by its runtime)."""
    path = getattr(path_or_artifact, "path", path_or_artifact)
    if runtime is None:
        runtime = getattr(path_or_artifact, "runtime", None) or runtime_for_file(path)
    if path is None:
        raise EdgeKDError(f"artifact {getattr(path_or_artifact, 'name', '?')} has no file to run",
                          "its export failed or was skipped; see its reason")
    cls = RUNTIMES.get(runtime)
    if runtime == "tensorrt":
        return cls(path, threads=threads)
    return cls(path, threads=threads, device=device)


def available_runtimes() -> dict[str, tuple[bool, str]]:
    return {name: cls.available() for name, cls in RUNTIMES.items()}
