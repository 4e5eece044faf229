"""Preparing a trained supernet for fast sampling (the training path never calls this).

Three things make narrow sub-networks run closer to their GFLOPs (bench/width_latency.md):

- packed weights: each slimmable layer keeps a contiguous copy of its narrow weights per width
  (``SlimConv2d.weights_at``); :func:`prepare_for_inference` builds them all up front, so the first
  sampling call at a width is not slower than the others and a latency measurement needs no warm-up
  for it;
- channels_last: convolutions on CPU (oneDNN) and GPU (cuDNN) run faster on NHWC tensors;
- hardware-friendly widths: ``UNetConfig.channel_multiple`` (a property of the trained supernet, not
  of this step).

Optional wrappers replace the per-op Python of the eager supernet, which dominates small calls:
:class:`ScriptedWidths` (any device; a TorchScript graph per width, for the CPU) and
:class:`GraphedWidths` (CUDA graphs).

The model's numbers do not change beyond float rounding (tests/core/test_inference.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ddsm_core.slimmable import SlimConv2d, SlimLinear
from ddsm_core.static import materialize
from ddsm_core.widths import match_width

# Where NHWC pays off (bench/width_latency.md): on the CPU (oneDNN); on CUDA for half types only
# (cuDNN's NHWC kernels are the tensor-core ones; float32 NCHW is as fast or faster there).
CPU_CHANNELS_LAST = True


def default_channels_last(model: nn.Module) -> bool:
    """Whether :func:`prepare_for_inference` stores the model channels_last by default."""
    p = next(model.parameters())
    if p.device.type == "cuda":
        return p.dtype in (torch.bfloat16, torch.float16)
    return CPU_CHANNELS_LAST


def prepare_for_inference(
    model: nn.Module, *, channels_last: bool | None = None, widths: Sequence[float] | None = None
) -> nn.Module:
    """Eval mode, optionally channels_last, and every width's packed weights built now.

    :param model: a :class:`~ddsm_core.unet.SlimmableUNet` on its device and in its dtype (modified
        in place and returned).
    :param channels_last: store 4-d weights NHWC; activations follow (a conv with an NHWC weight
        returns NHWC), so inputs need no conversion. Default: :func:`default_channels_last`.
    :param widths: the widths to pack (default: all of the model's).
    """
    model.eval()
    if channels_last is None:
        channels_last = default_channels_last(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    chosen = tuple(model.config.widths if widths is None else widths)  # type: ignore[attr-defined]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (SlimConv2d, SlimLinear)):
                for width in chosen:
                    module.weights_at(width)
    return model


class GraphedWidths:
    """Replays one CUDA graph per (width, input shapes, dtypes) of an inference-ready supernet.

    On a GPU the eager slimmable UNet is bound by kernel launches below a few hundred images per batch
    (bench/gpu.md: every width takes about as long as full width at batch 1 and 64), so narrow widths
    save no time. A captured graph launches the whole network at once. Graphs are captured lazily on
    the first call with a new key; off CUDA, or if a capture fails, calls go to the model as they are.
    Inference only: each call runs under ``torch.inference_mode`` and returns a fresh tensor.
    """

    def __init__(self, model: nn.Module, warmup: int = 2) -> None:
        self.model = model
        self.config = model.config  # type: ignore[attr-defined]
        self.training = False
        self.warmup = warmup
        self._graphs: dict[tuple, tuple] = {}
        self._pool: object = None  # one memory pool for all graphs: their intermediates can overlap
        self.fallback_reason: str | None = None

    def parameters(self) -> Iterator[nn.Parameter]:  # like nn.Module's: dtype/device lookups
        return self.model.parameters()

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, width: float = 1.0, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        with torch.inference_mode():
            if x.device.type != "cuda" or self.fallback_reason is not None:
                return self.model(x, t, width=width, y=y)
            key = (float(width), tuple(x.shape), x.dtype, tuple(t.shape), t.dtype,
                   None if y is None else (tuple(y.shape), y.dtype))  # fmt: skip
            entry = self._graphs.get(key)
            if entry is None:
                try:
                    entry = self._graphs[key] = self._capture(x, t, float(width), y)
                except RuntimeError as exc:  # e.g. a host sync inside the network: stay eager
                    self.fallback_reason = f"CUDA graph capture failed: {exc}"
                    return self.model(x, t, width=width, y=y)
            static_x, static_t, static_y, graph, out = entry
            static_x.copy_(x)
            static_t.copy_(t)
            if static_y is not None:
                static_y.copy_(y)
            graph.replay()
            return out.clone()

    def _capture(self, x: torch.Tensor, t: torch.Tensor, width: float, y: torch.Tensor | None) -> tuple:
        static_x, static_t = x.clone(), t.clone()
        static_y = None if y is None else y.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(self.warmup):
                self.model(static_x, static_t, width=width, y=static_y)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # Sharing is safe: replays never overlap, and every graph's inputs and output stay referenced.
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.model(static_x, static_t, width=width, y=static_y)
        return static_x, static_t, static_y, graph, out


class ScriptedWidths:
    """Runs each width as its own frozen TorchScript graph of the static sub-network.

    For every new (width, input shapes, dtypes, device) key, the width's plain copy
    (:func:`ddsm_core.static.materialize`, built once per width) is traced and frozen
    (``torch.jit.trace`` + ``torch.jit.freeze``: weights become constants, no Python runs per
    layer); later calls with the key run the graph. On the CPU this takes the Python module calls,
    slicing and dispatch out of every layer (bench/width_latency.md, "scripted"). The first call with
    a key pays the trace (well under a second for digits) and TorchScript's profiling runs: warm
    up before timing. Numbers match the eager model up to float rounding, not bit for bit.
    Inference only: each call runs under ``torch.no_grad``. Build it after the model's last weight
    change (the copies do not follow it).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config  # type: ignore[attr-defined]
        self.training = False
        self._static: dict[float, nn.Module] = {}
        self._graphs: dict[tuple, torch.jit.ScriptModule] = {}

    def parameters(self) -> Iterator[nn.Parameter]:  # like nn.Module's: dtype/device lookups
        return self.model.parameters()

    def eval(self) -> ScriptedWidths:
        return self

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, width: float = 1.0, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        width = match_width(width, self.config.widths)
        self.model.check_labels(y)  # type: ignore[operator]
        t = torch.as_tensor(t, device=x.device)
        inputs = (x, t) if y is None else (x, t, y)
        key = (width, x.device, *((tuple(a.shape), a.dtype) for a in inputs))
        with torch.no_grad():
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._graphs[key] = self._trace(width, inputs)
            return graph(*inputs)

    def _trace(self, width: float, inputs: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
        static = self._static.get(width)
        if static is None:
            static = self._static[width] = materialize(self.model, width)  # type: ignore[arg-type]
        with warnings.catch_warnings():
            # The tracer notes Python values it records as constants: shapes are fixed per key. torch
            # 2.14 marks TorchScript deprecated (FutureWarning) but ships it; torch.compile is no
            # replacement here yet (bench/width_latency.md: minutes per width, and no faster).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(static, inputs, check_trace=False)
            return torch.jit.freeze(traced.eval())
