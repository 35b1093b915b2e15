"""TensorRT on NVIDIA GPUs (the Jetson profiles): serialized engines, built per device from the ONNX."""

from __future__ import annotations

from edgekd.errors import EdgeKDError
from edgekd.runtimes.base import FusionRules, Runner, Runtime, register


class TensorRTRunner(Runner):
    """TensorRT engines (``.engine``) on an NVIDIA GPU; device buffers through torch.cuda."""

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


# Conv/gemm + BN + activation + residual add, and chains of pointwise ops -> one PointWise kernel
# ("Types of Fusions", TensorRT developer guide).
FUSIONS = FusionRules(fold=frozenset({"BatchNormalization"}), epilogue=frozenset({"Add", "Mul", "Sub", "Div", "Sum"}),
                      epilogue_activations=True, max_epilogue=8, pointwise_chain=True)

RUNTIME = register(Runtime(
    name="tensorrt", description="TensorRT", runner=TensorRTRunner,
    suffixes=(".engine", ".plan", ".trt"), file_format="tensorrt", deploys=("tensorrt", "onnx"), compiles_fp32=True,
    fusions=FUSIONS, export_formats=("tensorrt-fp16",), builds_on_device=True, on_device=True,
    device_modules=("tensorrt", "pycuda"), device_tool="trtexec",
    device_install="install TensorRT there (JetPack ships it, with trtexec in /usr/src/tensorrt/bin), or give its "
                   "Python the tensorrt and pycuda modules",
    packages=("tensorrt",), color="#5f9e1a",
))
