"""Measured latency of the supernet, and a strategy's predicted sampling time.

GFLOPs are the paper's currency; users pay in seconds, and on real kernels the two part ways (narrow
layers run at lower efficiency, the sampler itself costs time per step). A :class:`LatencyTable` holds
what one device measured for one supernet and one dtype:

- ``seconds[w][b]``: median wall time of ONE network call ``model(x, t, width)`` at width ``widths[w]``
  on a batch of ``batch_sizes[b]`` images (after warm-up calls; repeats timed round-robin over the
  widths so that a burst of load on a shared machine hits every width alike);
- ``overhead[sampler][b]``: the sampler's own time per step at that batch size (VE/VP conversion, the
  update, the seeded per-sample noise), measured by running the real sampler over a model that costs
  nothing (it returns zeros).

A strategy's predicted latency is then the sum over its network calls
(:meth:`ddsm_core.strategy.Strategy.network_calls`, so EDM Heun's second evaluations count) plus
``steps x overhead``, per batch, summed over the batches of an evaluation. Batch sizes between or
beyond the measured ones are interpolated linearly (a call costs about ``a + b * n``).
bench/latency_prediction.md checks the prediction against measured sampling time.

The table itself is torch-free (the API process reads it); measuring imports torch.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddsm_core.atomic import write_text_atomic
from ddsm_core.errors import ConfigError
from ddsm_core.strategy import SAMPLERS, Strategy, canonical_sampler, width_index
from ddsm_core.widths import format_width

if TYPE_CHECKING:
    import torch

FORMAT = "ddsm-latency-table"
VERSION = 1
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LatencyTable:
    """Seconds per network call and per sampler step, measured on one device.

    :param device: the device's name, e.g. ``"cpu: Intel(R) Xeon(R) Processor"`` or
        ``"cuda: NVIDIA H100 80GB HBM3"``.
    :param dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``: the dtype of weights and inputs.
    :param threads: torch intra-op threads of the measuring process (0 for a GPU).
    :param widths: width fractions, strictly increasing.
    :param batch_sizes: measured batch sizes, strictly increasing.
    :param seconds: ``[len(widths)][len(batch_sizes)]`` median seconds of one call on the whole batch.
    :param overhead: sampler name -> ``[len(batch_sizes)]`` seconds per sampler step beside the calls.
    :param model: what was measured: ``{"preset": ..., "checkpoint_sha256": ..., "config": {...}}``.
    :param method: how: warm-up calls, repeats, statistic, torch version, date.
    """

    device: str
    dtype: str
    threads: int
    widths: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    seconds: tuple[tuple[float, ...], ...]
    overhead: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    method: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        widths = tuple(float(w) for w in self.widths)
        batches = tuple(int(b) for b in self.batch_sizes)
        if not widths or any(b <= a for a, b in zip(widths, widths[1:], strict=False)):
            raise ConfigError(f"latency table widths must be non-empty and increasing, got {widths}")
        if not batches or batches[0] < 1 or any(b <= a for a, b in zip(batches, batches[1:], strict=False)):
            raise ConfigError(f"latency table batch sizes must be positive and increasing, got {batches}")
        rows = tuple(_row("seconds", r, len(batches)) for r in self.seconds)
        if len(rows) != len(widths):
            raise ConfigError(f"latency table has {len(widths)} widths but {len(rows)} rows of seconds")
        overhead = {
            canonical_sampler(s): _row(f"overhead[{s}]", v, len(batches)) for s, v in self.overhead.items()
        }
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "batch_sizes", batches)
        object.__setattr__(self, "seconds", rows)
        object.__setattr__(self, "overhead", overhead)
        object.__setattr__(self, "model", dict(self.model))
        object.__setattr__(self, "method", dict(self.method))

    # ------------------------------------------------------------------------------- lookups
    def call_seconds(self, width: float, batch: int) -> float:
        """Seconds of one network call at ``width`` on ``batch`` images (interpolated in batch)."""
        return _interpolate(self.batch_sizes, self.seconds[width_index(self.widths, width)], batch)

    def step_overhead(self, sampler: str, batch: int) -> float:
        """The sampler's own seconds per step on ``batch`` images (0 if it was not measured)."""
        values = self.overhead.get(canonical_sampler(sampler))
        return 0.0 if values is None else _interpolate(self.batch_sizes, values, batch)

    def predict_batch(self, strategy: Strategy, batch: int) -> float:
        """Predicted seconds to sample one batch of ``batch`` images with ``strategy``."""
        calls = math.fsum(self.call_seconds(w, batch) for w in strategy.network_calls())
        return calls + strategy.steps * self.step_overhead(strategy.sampler, batch)

    def predict(self, strategy: Strategy, n_images: int = 1, batch_size: int | None = None) -> float:
        """Predicted seconds to sample ``n_images`` in batches of ``batch_size`` (default: one batch)."""
        if n_images < 1:
            raise ConfigError(f"n_images must be >= 1, got {n_images}")
        batch_size = n_images if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        full, rest = divmod(n_images, batch_size)
        total = full * self.predict_batch(strategy, batch_size)
        return total + (self.predict_batch(strategy, rest) if rest else 0.0)

    def per_image(self, strategy: Strategy, batch_size: int) -> float:
        """Predicted seconds per image at ``batch_size`` images per batch (the search's latency)."""
        return self.predict_batch(strategy, batch_size) / batch_size

    # ------------------------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "widths": list(self.widths),
            "batch_sizes": list(self.batch_sizes),
            "seconds": [list(r) for r in self.seconds],
            "overhead": {k: list(v) for k, v in self.overhead.items()},
            "model": dict(self.model),
            "method": dict(self.method),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        if data.get("format") != FORMAT:
            raise ConfigError(f"not a latency table (format {data.get('format')!r}, expected {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ConfigError(f"latency table version {data.get('version')!r} is not supported ({VERSION})")
        try:
            return cls(
                device=str(data["device"]), dtype=str(data["dtype"]), threads=int(data["threads"]),
                widths=tuple(data["widths"]), batch_sizes=tuple(data["batch_sizes"]),
                seconds=tuple(tuple(r) for r in data["seconds"]),
                overhead={k: tuple(v) for k, v in (data.get("overhead") or {}).items()},
                model=data.get("model") or {}, method=data.get("method") or {},
            )  # fmt: skip
        except KeyError as exc:
            raise ConfigError(f"latency table is missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"malformed latency table: {exc}") from None

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> LatencyTable:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"latency table is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("latency table JSON must be an object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.to_json() + "\n")  # a reader never sees half a table

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        try:
            return cls.from_json(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read latency table {path}: {exc.strerror or exc}") from None

    def describe(self) -> str:
        """A text table: ms per call per width and batch size, then the samplers' ms per step."""
        head = f"{'width':>6}" + "".join(f"{f'batch {b}':>12}" for b in self.batch_sizes)
        lines = [f"{self.device}, {self.dtype}, {self.threads} thread(s): ms per network call", head]
        for w, row in zip(self.widths, self.seconds, strict=True):
            lines.append(f"{format_width(w):>6}" + "".join(f"{1e3 * s:>12.3f}" for s in row))
        if self.overhead:
            lines.append("sampler overhead, ms per step")
            for name, row in self.overhead.items():
                lines.append(f"{name:>6}" + "".join(f"{1e3 * s:>12.3f}" for s in row))
        return "\n".join(lines)


def table_filename(device: str, dtype: str) -> str:
    """The file name of a device's table in a checkpoint folder: ``latency-cpu-intel-r-xeon-r-processor-
    float32.json``. ``ddsm latency --checkpoint`` writes it there and ``ddsm search`` looks for it."""
    slug = "-".join("".join(c if c.isalnum() else " " for c in device.lower()).split())
    return f"latency-{slug or 'device'}-{dtype}.json"


def find_table(folder: str | Path, device: str, dtype: str = "float32") -> LatencyTable | None:
    """The table measured on ``device`` in ``dtype`` kept in ``folder`` (a checkpoint), None if none."""
    path = Path(folder) / table_filename(device, dtype)
    return LatencyTable.load(path) if path.is_file() else None


def _row(name: str, values: Any, n: int) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != n:
        raise ConfigError(f"latency table {name} must hold {n} numbers (one per batch size), got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"latency table {name} must hold finite non-negative seconds, got {v!r}")
        out.append(float(v))
    return tuple(out)


def _interpolate(xs: Sequence[int], ys: Sequence[float], x: int) -> float:
    """Piecewise-linear in ``x`` through the measured points, extended linearly at both ends.

    One measured point: proportional to the batch size (the best a single point can say). Never
    below zero: a line extended below the smallest batch could cross it.
    """
    if x < 1:
        raise ConfigError(f"batch size must be >= 1, got {x}")
    i = bisect.bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return ys[i]
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    i = min(max(i, 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


# ------------------------------------------------------------------------------------ measuring
def device_name(device: torch.device | str) -> str:
    """A human-readable device name: the GPU's product name, or the CPU model."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu: {_cpu_model()}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


Clock = Callable[[], float]


def time_round_robin(
    fns: Mapping[Any, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
    clock: Clock = time.perf_counter,
) -> dict[Any, float]:
    """Median seconds of each function: ``warmup`` untimed rounds, then ``repeats`` timed rounds, each
    round calling every function once (so that load from other processes spreads over all of them).

    :param clock: wall time by default; ``time.thread_time`` (one torch thread, CPU only) counts the
        call's own CPU time, which a machine shared with other jobs does not inflate.
    """
    samples: dict[Any, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for key, fn in fns.items():
            _sync(device)
            start = clock()
            fn()
            _sync(device)
            if r >= warmup:
                samples[key].append(clock() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


class _ZeroModel:
    """An epsilon model that costs nothing: the sampler's own work is all that is left to time."""

    training = False

    def __call__(self, x: torch.Tensor, t: torch.Tensor, width: float = 1.0, y: Any = None) -> torch.Tensor:
        import torch

        return torch.zeros_like(x)


def measure_overhead(
    schedule: Any,
    shape: Sequence[int],
    batch_sizes: Sequence[int],
    samplers: Sequence[str] = SAMPLERS,
    *,
    steps: int = 10,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    clock: Clock = time.perf_counter,
) -> dict[str, tuple[float, ...]]:
    """Seconds per sampler step beside the network calls, per sampler and batch size.

    Runs :func:`ddsm_core.sampling.sample` (the code path of ``ddsm sample`` and of every evaluation)
    with a model that returns zeros, over ``steps`` steps; EDM's two calls per step are included in
    its per-step figure, as the prediction counts them per step.
    """
    import torch

    from ddsm_core.sampling import VPDenoiser, sample

    dev = torch.device(device)
    dtype = torch.float32 if dtype is None else dtype
    denoiser = VPDenoiser(_ZeroModel(), schedule)  # type: ignore[arg-type]
    out: dict[str, tuple[float, ...]] = {}
    with torch.inference_mode():
        for name in samplers:
            strategy = Strategy.uniform(canonical_sampler(name), steps, 0, (1.0,))

            def run(b: int, strategy: Strategy = strategy) -> None:
                sample(denoiser, strategy, shape, range(b), device=dev, dtype=dtype, clip=True)

            fns = {b: (lambda b=b: run(b)) for b in batch_sizes}
            med = time_round_robin(fns, repeats, warmup, dev, clock)
            out[strategy.sampler] = tuple(med[b] / steps for b in batch_sizes)
    return out


def measure_latency(
    model: Any,
    batch_sizes: Sequence[int],
    *,
    schedule: Any = None,
    widths: Sequence[float] | None = None,
    samplers: Sequence[str] = SAMPLERS,
    repeats: int = 7,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    dtype: str = "float32",
    model_info: Mapping[str, Any] | None = None,
    clock: Clock = time.perf_counter,
) -> LatencyTable:
    """Measure a :class:`LatencyTable` for ``model`` (a SlimmableUNet) on ``device``.

    The model is used as it is (put it on ``device``, in ``dtype``, in eval mode, and prepared for
    inference with :func:`ddsm_core.fast.prepare_for_inference` if that is how it will sample).
    Inputs are random images at a mid-chain timestep; a class-conditional model gets labels.

    :param schedule: the noise schedule, for the sampler overhead (skipped when None).
    :param repeats: timed calls per width and batch size (the median is kept).
    :param warmup: untimed calls first (allocator, kernel selection, lazily packed weights).
    """
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    batches = tuple(sorted({int(b) for b in batch_sizes}))
    if not batches or batches[0] < 1:
        raise ConfigError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    dev = torch.device(device)
    cfg = model.config
    chosen = tuple(cfg.widths if widths is None else sorted(widths))
    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    seconds: dict[tuple[float, int], float] = {}
    with torch.inference_mode():
        for b in batches:
            x = torch.randn(b, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
            x = x.to(device=dev, dtype=torch_dtype)
            t = torch.full((b,), 500.0, device=dev, dtype=torch_dtype)
            y = None if not cfg.num_classes else (torch.arange(b) % cfg.num_classes).to(dev)
            fns = {w: (lambda w=w, x=x, t=t, y=y: model(x, t, width=w, y=y)) for w in chosen}
            for w, s in time_round_robin(fns, repeats, warmup, dev, clock).items():
                seconds[(w, b)] = s
    overhead: dict[str, tuple[float, ...]] = {}
    if schedule is not None:
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        overhead = measure_overhead(
            schedule,
            shape,
            batches,
            samplers,
            repeats=max(3, repeats // 2),
            device=dev,
            dtype=torch_dtype,
            clock=clock,
        )
    return LatencyTable(
        device=device_name(dev),
        dtype=dtype,
        threads=torch.get_num_threads() if dev.type == "cpu" else 0,
        widths=chosen,
        batch_sizes=batches,
        seconds=tuple(tuple(seconds[(w, b)] for b in batches) for w in chosen),
        overhead=overhead,
        model={"config": cfg.to_dict(), **(model_info or {})},
        method={
            "warmup": warmup, "repeats": repeats, "statistic": "median", "torch": torch.__version__,
            "clock": getattr(clock, "__name__", str(clock)),
            "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        },
    )  # fmt: skip
