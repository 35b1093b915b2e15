"""ONNX Runtime: .onnx and .ort files on CPU (or CUDA); the runtime of Raspberry Pi profiles and of the host."""

from __future__ import annotations

import numpy as np

from edgekd.errors import EdgeKDError, first_line
from edgekd.runtimes.base import FusionRules, Runner, Runtime, TimedCall, register


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime: ``.onnx`` and ``.ort`` files; CPU, or the CUDA execution provider on a GPU."""

    modules = ("onnxruntime",)
    install_hint = "pip install onnxruntime"
    timing_method = ("IO binding: input and output OrtValues bound once, run_with_iobinding() per call "
                     "(as onnxruntime_perf_test times Session::Run on ready tensors)")

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
            raise EdgeKDError(f"onnxruntime cannot load {self.path}: {first_line(err)}",
                              "re-export the model; the file may be truncated or from a newer opset") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        # An FP16 export without kept float32 I/O takes half-precision input.
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        batch = inp.shape[0] if inp.shape else None
        self.max_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.providers = self.session.get_providers()

    def _run(self, x):
        return self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[0]

    def timed_call(self, x):
        import onnxruntime as ort

        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        out = self.session.get_outputs()[0]
        shape = self.session.run([out.name], {self.input_name: x})[0].shape  # a dynamic output's size, once
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x))
        dtype = np.float16 if out.type == "tensor(float16)" else np.float32
        binding.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype))
        # No RunOptions argument: passing one (even a default one) made each call ten times slower in ORT 1.32.
        run = self.session.run_with_iobinding
        return TimedCall(lambda: run(binding), lambda: binding.get_outputs()[0].numpy(), self.timing_method)

    def versions(self):
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "providers": self.providers}


# ONNX Runtime's ConvBNFusion and ConvActivationFusion (Relu, Clip, Sigmoid, Tanh, LeakyRelu, HardSigmoid,
# HardSwish; checked against ORT 1.32's optimized graph of mobilenet_v3_small) and on x86 the NCHWc
# ConvAddActivation fusion (conv + residual add + activation); MatMul+Add -> Gemm.
FUSIONS = FusionRules(fold=frozenset({"BatchNormalization"}),
                      epilogue=frozenset({"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish",
                                          "Add", "Sum"}),
                      max_epilogue=2, pointwise_chain=False)

RUNTIME = register(Runtime(
    name="onnxruntime", description="ONNX Runtime", runner=OnnxRuntimeRunner,
    suffixes=(".onnx", ".ort"), file_format="onnx", fusions=FUSIONS, on_device=True,
    device_modules=("onnxruntime",),
    device_install="pip3 install onnxruntime there (on a Jetson: NVIDIA's onnxruntime-gpu wheel for its JetPack)",
    packages=("onnxruntime", "onnxruntime-gpu"), color="#2e86de",
))
