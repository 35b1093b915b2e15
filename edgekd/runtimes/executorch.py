"""ExecuTorch with the XNNPACK delegate: .pte programs for Android and iOS (the Pixel profile)."""

from __future__ import annotations

from edgekd.errors import EdgeKDError, first_line
from edgekd.runtimes.base import FusionRules, Runner, Runtime, module_version, register


class ExecuTorchRunner(Runner):
    """ExecuTorch ``.pte`` programs (XNNPACK delegate) through ``executorch.runtime``."""

    modules = ("executorch",)
    install_hint = "pip install executorch (the mobile runtime for Android and iOS)"

    def __init__(self, path, *, threads=None, device="cpu"):
        super().__init__(path, threads=threads, device=device)
        import torch
        from executorch.runtime import Runtime as _ETRuntime

        if threads:
            from executorch.extension.pybindings import portable_lib

            # XNNPACK uses ExecuTorch's process-wide thread pool; resizing it is the only knob.
            portable_lib._unsafe_reset_threadpool(int(threads))
        try:
            program = _ETRuntime.get().load_program(self.path)
            self.method = program.load_method("forward")
            # Memory is planned for the batch bound chosen at export; larger batches are split.
            sizes = program.metadata("forward").input_tensor_meta(0).sizes()
        except Exception as err:  # noqa: BLE001
            raise EdgeKDError(f"executorch cannot load {self.path}: {first_line(err)}",
                              "re-export the .pte; it may be truncated or built by another ExecuTorch version") from None
        self._torch = torch
        self.max_batch = int(sizes[0]) if sizes else None

    def _run(self, x):
        out = self.method.execute([self._torch.from_numpy(x)])
        return out[0].numpy()

    def versions(self):
        return {"executorch": module_version("executorch")}


# XNNPACK delegate: BN folded into conv; ReLU/Clip become the output clamp of conv, gemm and add; other
# activations (hardswish, sigmoid) stay separate operators.
FUSIONS = FusionRules(fold=frozenset({"BatchNormalization"}), epilogue=frozenset({"Relu", "Clip"}), max_epilogue=1)

RUNTIME = register(Runtime(
    name="executorch", description="ExecuTorch (XNNPACK)", runner=ExecuTorchRunner,
    suffixes=(".pte",), file_format="executorch", fusions=FUSIONS, export_formats=("executorch",),
    packages=("executorch",), color="#d4a017",
))
