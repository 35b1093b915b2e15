"""PyTorch eager: the FP32 baseline every speed-up is measured against (edgekd safetensors checkpoints)."""

from __future__ import annotations

from pathlib import Path

from edgekd.runtimes.base import Runner, Runtime, register


class PyTorchRunner(Runner):
    """PyTorch eager: an edgekd safetensors checkpoint, or an ``nn.Module`` via :meth:`from_module`."""

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


RUNTIME = register(Runtime(
    name="pytorch", description="PyTorch eager (the baseline)", runner=PyTorchRunner,
    suffixes=(".safetensors",), file_format="pytorch", packages=("torch",), color="#e4572e",
))
