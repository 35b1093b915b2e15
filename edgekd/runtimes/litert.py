"""LiteRT (TensorFlow Lite): .tflite flatbuffers with the XNNPACK delegate, on Android and embedded Linux."""

from __future__ import annotations

from edgekd.errors import EdgeKDError, first_line
from edgekd.runtimes.base import FusionRules, Runner, Runtime, module_version, register


class LiteRTRunner(Runner):
    """LiteRT (TFLite) ``.tflite`` flatbuffers through the ai-edge-litert interpreter (XNNPACK on CPU)."""

    modules = ("ai_edge_litert",)
    install_hint = "pip install ai-edge-litert"

    def __init__(self, path, *, threads=None, device="cpu"):
        super().__init__(path, threads=threads, device=device)
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except Exception as err:  # noqa: BLE001
            raise EdgeKDError(f"litert cannot load {self.path}: {first_line(err)}",
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
        return {"litert": module_version("ai-edge-litert")}


# The TFLite converter folds BatchNorm into the conv and writes ReLU/ReLU6 (Clip) as the producing op's
# fused_activation_function, which XNNPACK applies as the output clamp; other activations stay operators.
FUSIONS = FusionRules(fold=frozenset({"BatchNormalization"}), epilogue=frozenset({"Relu", "Clip"}), max_epilogue=1)

RUNTIME = register(Runtime(
    name="litert", description="LiteRT (TFLite, XNNPACK)", runner=LiteRTRunner,
    suffixes=(".tflite",), file_format="litert", fusions=FUSIONS, export_formats=("litert",), on_device=True,
    device_modules=("ai_edge_litert|tflite_runtime|tensorflow",),
    device_install="pip3 install ai-edge-litert there (or tflite-runtime)",
    packages=("ai-edge-litert",), color="#e67e22",
))
