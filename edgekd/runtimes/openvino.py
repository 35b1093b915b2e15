"""OpenVINO on Intel CPUs (and GPUs): IR .xml/.bin files, and ONNX files compiled directly."""

from __future__ import annotations

from edgekd.errors import EdgeKDError, first_line
from edgekd.runtimes.base import FusionRules, Runner, Runtime, TimedCall, register


class OpenVINORunner(Runner):
    """OpenVINO on CPU: an IR ``.xml`` (with its ``.bin``) or an ``.onnx`` file."""

    modules = ("openvino",)
    install_hint = "pip install openvino"
    timing_method = ("infer request with its input tensor set once, infer() per call "
                     "(as benchmark_app -api sync times InferRequest::infer)")

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
            raise EdgeKDError(f"openvino cannot load {self.path}: {first_line(err)}",
                              "re-export the model; the .xml/.bin may be truncated") from None
        self.request = self.compiled.create_infer_request()

    def _run(self, x):
        return self.request.infer({0: x})[self.compiled.output(0)]

    def timed_call(self, x):
        import numpy as np
        import openvino as ov

        request = self.compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
        return TimedCall(request.infer, lambda: request.get_output_tensor(0).data.copy(), self.timing_method)

    def versions(self):
        import openvino as ov

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
