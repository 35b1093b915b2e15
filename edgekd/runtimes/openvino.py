"""OpenVINO on Intel CPUs (and GPUs): IR .xml/.bin files, and ONNX files compiled directly."""

from __future__ import annotations

from edgekd.errors import EdgeKDError, first_line
from edgekd.runtimes.base import FusionRules, Runner, Runtime, TimedCall, register


class OpenVINORunner(Runner):
    """OpenVINO on CPU: an IR ``.xml`` (with its ``.bin``) or an ``.onnx`` file."""

    modules = ("openvino",)
    install_hint = "pip install openvino"
    timing_method = ("compiled for the timed batch, infer request with its input tensor set once, infer() per call "
                     "(as benchmark_app -api sync -shape times InferRequest::infer)")

    def __init__(self, path, *, threads=None, device="cpu", precision_hint: str | None = "f32"):
        super().__init__(path, threads=threads, device=device)
        from edgekd.offline import openvino_core, signal_stack_kept

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
        self.precision_hint, self.config = precision_hint, config
        ov_device = "GPU" if device.startswith("cuda") or device.upper() == "GPU" else "CPU"
        try:
            with signal_stack_kept():
                self.compiled = openvino_core().compile_model(str(self.path), ov_device, config)
        except Exception as err:  # noqa: BLE001
            raise EdgeKDError(f"openvino cannot load {self.path}: {first_line(err)}",
                              "re-export the model; the .xml/.bin may be truncated") from None
        self.request = self.compiled.create_infer_request()

    def _run(self, x):
        # A tensor set on the request, not infer({0: x}): with openvino 2026.4 the dict call on an IR with a
        # dynamic batch slowed down by orders of magnitude in long loops and once corrupted the heap.
        import openvino as ov  # quieted by __init__ (edgekd.offline)

        self.request.set_input_tensor(ov.Tensor(x))
        self.request.infer()
        return self.request.get_output_tensor(0).data.copy()

    def timed_call(self, x):
        import numpy as np
        import openvino as ov  # quieted by __init__ (edgekd.offline)

        from edgekd.offline import openvino_core, signal_stack_kept

        # Compiled for the timed batch, as benchmark_app -shape does with an IR whose batch is dynamic:
        # the latency of the file deployed at that batch, without per-call shape inference.
        compiled = self.compiled
        try:
            core = openvino_core()
            model = core.read_model(str(self.path))
            if model.inputs[0].partial_shape.is_dynamic:
                model.reshape({0: list(x.shape)})
                with signal_stack_kept():
                    compiled = core.compile_model(model, "GPU" if self.device.startswith("cuda") else "CPU", self.config)
        except Exception:  # noqa: BLE001 - a model that will not take a static shape is timed as it is
            compiled = self.compiled
        request = compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
        return TimedCall(request.infer, lambda: (compiled, request.get_output_tensor(0).data.copy())[1],
                         self.timing_method)

    def versions(self):
        from edgekd.offline import import_openvino

        ov = import_openvino()

        return {"openvino": ov.get_version(), "precision_hint": self.precision_hint}


# The CPU plugin fuses BN, activations, eltwise and FakeQuantize into conv post-ops and merges eltwise chains.
FUSIONS = FusionRules(fold=frozenset({"BatchNormalization"}), epilogue=frozenset({"Add", "Mul", "Sub", "Div", "Sum"}),
                      epilogue_activations=True, max_epilogue=8, pointwise_chain=True)

RUNTIME = register(Runtime(
    name="openvino", description="OpenVINO", runner=OpenVINORunner,
    suffixes=(".xml",), file_format="openvino", reads=(".onnx",), deploys=("openvino", "onnx"),
    fusions=FUSIONS, on_device=True, packages=("openvino", "nncf"), color="#8e44ad",
    device_modules=("openvino",), device_install="pip3 install openvino there",
))
