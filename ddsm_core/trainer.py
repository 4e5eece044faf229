"""The training loop: model, EMA, optimizer and data of one process; checkpoints, stop requests, progress.

Determinism. Everything random in step ``k`` is drawn from generators seeded by
``derive_seed(seed, ..., k)`` (:mod:`ddsm_core.train_step`), so a run is a function of its config
alone and resuming at step ``k`` needs no RNG state: it is exact (bitwise on CPU). Under DDP (launched
with ``torchrun``; :mod:`ddsm_core.distributed`) every rank takes its slice of the same global batch and
rank 0 writes checkpoints, samples and logs. bf16 autocast is used on CUDA when ``amp`` is on.

Stopping. SIGINT / SIGTERM never lose work and never wait for long: between steps the request is
polled (all ranks stop at the same step); the evaluation and sample grids (which can be redone) are cut
short at once. Either way the trainer writes a checkpoint and returns ``interrupted``. A run stopped in
its final phase (after its last step, before its final evaluation and samples were written) is
``interrupted`` too: its checkpoint says ``finished: false`` and resuming it does that phase.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddsm_core import checkpoint as ckpt_io
from ddsm_core.config import UNetConfig
from ddsm_core.data import StepBatchSampler, derive_seed, load_dataset
from ddsm_core.device import pick_device
from ddsm_core.distributed import DistEnv
from ddsm_core.errors import ConfigError, DDSMError
from ddsm_core.recipes import TrainConfig, check_resume_config
from ddsm_core.stopping import CutShort, StopRequest
from ddsm_core.train_eval import WidthLosses, eval_width_losses, sample_width_grid
from ddsm_core.train_log import LOG_FILE, SAMPLES_DIR
from ddsm_core.train_step import drop_labels, ema_update, lr_factor, step_draws, train_step
from ddsm_core.widths import format_width


class TrainingError(DDSMError):
    """Training cannot go on (a non-finite loss, a run directory in the way, ...)."""


@dataclass(frozen=True)
class TrainResult:
    """Where a call to :func:`train` ended.

    :param interrupted: a stop request (or ``stop_at``) ended it before the run was finished (its last
        step taken AND its final evaluation and samples written); ``checkpoint`` resumes it.
    :param signal: the signal that asked it to stop, if any.
    """

    step: int
    checkpoint: Path | None
    interrupted: bool
    signal: int | None
    wall_s: float
    eval: WidthLosses | None


class Trainer:
    """The state of one training process: model, EMA, optimizer, data; rank 0 also writes the run."""

    def __init__(
        self,
        model_config: UNetConfig,
        config: TrainConfig,
        out_dir: Path,
        dev: torch.device,
        dist_env: DistEnv,
    ) -> None:
        from ddsm_core.unet import SlimmableUNet

        if config.batch_size % dist_env.world:
            raise ConfigError(
                f"batch size {config.batch_size} is not divisible by {dist_env.world} processes"
            )
        if config.label_dropout > 0 and model_config.null_class is None:
            raise ConfigError(
                "label_dropout needs a class-conditional model with a null label (UNetConfig.null_label; "
                "resolve_recipe sets it)"
            )
        self.model_config, self.config, self.out_dir = model_config, config, out_dir
        self.dataset: Any = None  # set before run()
        self.eval_dataset: Any = None
        self.dev, self.dist = dev, dist_env
        self.is_main = dist_env.is_main
        self.schedule = config.schedule()
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, global RNG untouched
            torch.manual_seed(derive_seed(config.seed, "init"))
            self.model = SlimmableUNet(model_config).to(dev)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda k: lr_factor(config, k))
        self.step = 0
        self.finished = False  # the last step taken and the final evaluation and samples written
        self.last_ckpt: Path | None = None
        self.last_eval: WidthLosses | None = None
        self.smooth: dict[float, float] = {}
        self.amp = config.amp and dev.type == "cuda"
        local = config.batch_size // dist_env.world
        self.part = slice(dist_env.rank * local, (dist_env.rank + 1) * local)  # this rank's share of a batch

    # 1. fresh start or exact resume
    def prepare(self, resume: bool) -> None:
        existing = ckpt_io.find_resumable(self.out_dir) if self.out_dir.exists() else None
        if existing is not None and not resume:
            raise TrainingError(
                f"{self.out_dir} already holds a run (checkpoint {existing.name}); pass --resume to continue "
                "it or choose another --out"
            )
        if existing is not None:
            self._restore(existing)
            self.last_ckpt = existing

    def create_out_dir(self) -> None:
        """Make the run folder: after every check and the data load, so a failed start leaves none."""
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt_io.clean_stale_temporaries(self.out_dir)

    def _restore(self, ckpt: Path) -> None:
        from safetensors.torch import load_file

        manifest = ckpt_io.read_manifest(ckpt)
        ckpt_io.check_compatible(manifest, self.model_config)
        check_resume_config(manifest.get("train_config"), self.config, ckpt.parent)
        if manifest["schedule"] != self.schedule.to_dict():
            raise ConfigError(f"{ckpt} was trained with noise schedule {manifest['schedule']}")
        for module, key in ((self.model, "model"), (self.ema, "ema")):
            fname = manifest["weights"][key]
            ckpt_io.load_state_into(module, load_file(str(ckpt / fname), device=str(self.dev)), ckpt / fname)
        state = ckpt_io.load_training_state(ckpt, map_location=str(self.dev))
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["lr_scheduler"])
        self.step = int(manifest["step"])
        saved_steps = (manifest.get("train_config") or {}).get("steps", self.step)
        # checkpoints older than the flag were written at the end only after the final phase
        self.finished = bool(manifest.get("finished", self.step >= saved_steps))

    # 2. the loop
    def run(
        self,
        *,
        progress: bool,
        callback: Callable[[dict[str, Any]], None] | None,
        stop_at: int | None,
        started: float,
    ) -> TrainResult:
        cfg = self.config
        net, no_sync = self.model, None
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                self.model, device_ids=[self.dev.index] if self.dev.type == "cuda" else None
            )
            no_sync = net.no_sync
        # Batches are a function of (seed, step): a resumed run sees what the first one would have seen.
        sampler = StepBatchSampler(
            len(self.dataset), cfg.batch_size, seed=cfg.seed, start_step=self.step, total_steps=cfg.steps,
            rank=self.dist.rank, world=self.dist.world,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=self.dev.type == "cuda",
        )
        bar = _progress_bar(cfg.steps, self.step, enabled=progress and self.is_main)
        with StopRequest() as stop:
            if self.step == cfg.steps and not self.finished:  # stopped in its final phase before
                self.periodic(stop, final=True, interrupted=False, bar=bar)
            for x0, y in loader:
                record = self.train_one(net, no_sync, x0, y)
                record["elapsed_s"] = round(time.time() - started, 3)
                if self.is_main and callback is not None:
                    callback(record)
                stop_now = stop.signum is not None or (stop_at is not None and self.step >= stop_at)
                stop_now = self.dist.any_flag(stop_now) and self.step < cfg.steps
                self.log(record, bar, force=stop_now)
                self.periodic(stop, final=stop_now or self.step == cfg.steps, interrupted=stop_now, bar=bar)
                if stop_now:
                    break
        bar.close()
        return TrainResult(
            step=self.step,
            checkpoint=self.last_ckpt,
            interrupted=self.step < cfg.steps or not self.finished,
            signal=stop.signum,
            wall_s=time.time() - started,
            eval=self.last_eval,
        )

    def train_one(
        self,
        net: nn.Module,
        no_sync: Callable[[], contextlib.AbstractContextManager] | None,
        x0: Tensor,
        y: Tensor,
    ) -> dict[str, Any]:
        """One optimizer step of the sandwich rule; returns the step's log record."""
        cfg, dev = self.config, self.dev
        draws = step_draws(cfg, self.step, tuple(x0.shape[1:]), self.model_config.widths)
        x0 = x0.to(dev, non_blocking=True)
        if cfg.hflip:
            flip = draws["flip"][self.part].to(dev)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        y = y.to(dev) if self.model_config.num_classes is not None else None
        if y is not None and "label_drop" in draws:
            y = drop_labels(y, draws["label_drop"][self.part], self.model_config.null_class)  # type: ignore[arg-type]
        t, noise = draws["t"][self.part].to(dev), draws["noise"][self.part].to(dev)
        self.opt.zero_grad(set_to_none=True)
        # Dropout draws from the global RNG: fork it and seed it per step, so nothing leaks out and a
        # resumed run draws the same masks.
        with torch.random.fork_rng(devices=[dev.index] if dev.type == "cuda" else []):
            torch.manual_seed(derive_seed(cfg.seed, "dropout", self.step, self.dist.rank))
            losses = train_step(
                net, self.schedule, x0, y, t, noise, draws["widths"], distill=cfg.distill, amp=self.amp,
                no_sync=no_sync,
            )  # fmt: skip
        params = self.model.parameters()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
        lr = self.sched.get_last_lr()[0]  # the LR this step used (sched.step() moves to the next one's)
        self.opt.step()
        self.sched.step()
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step)) if cfg.ema_warmup else cfg.ema_decay
        ema_update(self.ema, self.model, decay)
        self.step += 1
        self.finished = False
        reduced = self.dist.mean(torch.stack(list(losses.values())).float()).tolist()
        values = dict(zip(losses, reduced, strict=True))
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingError(
                f"non-finite loss at step {self.step} ({_fmt_losses(values)}); lower --lr or check the data"
            )
        return {
            "step": self.step,
            "losses": {format_width(w): v for w, v in values.items()},
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "ema_decay": decay,
            "_values": values,
        }

    # 3. bookkeeping (rank 0): progress, log, eval, samples, checkpoints
    def log(self, record: dict[str, Any], bar: Any, force: bool) -> None:
        values = record.pop("_values")
        for w, v in values.items():
            self.smooth[w] = v if w not in self.smooth else 0.9 * self.smooth[w] + 0.1 * v
        if self.is_main and (
            force or _due(self.step, self.config.log_every) or self.step == self.config.steps
        ):
            _append_jsonl(self.out_dir / LOG_FILE, record)
            bar.set_postfix_str(_fmt_losses(self.smooth), refresh=False)
        bar.update(1)

    def periodic(self, stop: StopRequest, *, final: bool, interrupted: bool, bar: Any = None) -> None:
        """Eval loss, sample grids and checkpoints when due; ``final``: checkpoint now (all ranks).

        Their time is kept out of the bar's rate (``unpause``), so its ETA counts training steps only,
        and each one is announced on its own line, so a pause of the bar has a visible reason.
        """
        cfg, step = self.config, self.step
        bar = bar if bar is not None else _NoBar()
        if self.is_main:
            end = final and not interrupted
            eval_due = bool(cfg.eval_images) and (_due(step, cfg.eval_every) or end)
            samples_due = bool(cfg.sample_n) and (_due(step, cfg.sample_every) or end)
            ckpt_due = _due(step, cfg.checkpoint_every) or final
            work = [w for w, due in (("eval loss", eval_due), ("sample grids", samples_due),
                                     ("checkpoint", ckpt_due)) if due]  # fmt: skip
            if end and work:  # the final phase can take a while: say so before, not only after
                bar.write(f"step {step}: final {', '.join(work)} ...")
            t0 = time.perf_counter()
            cut_short = False
            try:
                with stop.abortable():
                    self._watch(eval_due=eval_due, samples_due=samples_due)
            except CutShort:  # the other ranks stop at the next step, where every rank agrees
                cut_short = True
            if end and not cut_short:
                self.finished = True
            if ckpt_due:
                self.last_ckpt = self.save()
            if work:
                where = self.out_dir / SAMPLES_DIR if samples_due else self.out_dir
                bar.write(f"step {step}: {', '.join(work)} ({time.perf_counter() - t0:.1f} s) -> {where}")
                bar.unpause()
        elif final and not interrupted:
            self.finished = True  # rank 0 writes the final phase
        if final:
            self.dist.barrier()

    def _watch(self, *, eval_due: bool, samples_due: bool) -> None:
        cfg, step = self.config, self.step
        if cfg.eval_images and eval_due:
            self.last_eval = eval_width_losses(
                self.ema, self.schedule, self.eval_dataset, n_images=cfg.eval_images, seed=cfg.seed,
                device=self.dev,
            )  # fmt: skip
            _append_jsonl(
                self.out_dir / "eval.jsonl", {"step": step, "ema": True, **self.last_eval.to_dict()}
            )
        if cfg.sample_n and samples_due:
            sample_width_grid(
                self.ema, self.schedule, self.out_dir / SAMPLES_DIR / f"{ckpt_io.step_dir_name(step)}.png",
                n=cfg.sample_n, sampler=cfg.sample_sampler, steps=cfg.sample_steps, seed=cfg.seed,
                device=self.dev,
            )  # fmt: skip

    def save(self) -> Path:
        state = {
            "step": self.step,
            "optimizer": self.opt.state_dict(),
            "lr_scheduler": self.sched.state_dict(),
        }
        return ckpt_io.save_to_run(
            self.out_dir,
            step=self.step,
            keep_last=self.config.keep_last,
            model_config=self.model_config,
            schedule=self.schedule.to_dict(),
            model_state=self.model.state_dict(),
            ema_state=self.ema.state_dict(),
            training_state=state,
            train_config=self.config.to_dict(),
            extra={
                "rng": "per step, derived from (train_config.seed, step, rank): resuming needs no RNG state",
                "eval": self.last_eval.to_dict() if self.last_eval is not None else None,
                "finished": self.finished,
            },
        )


def train(
    model_config: UNetConfig,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    dataset: Any = None,
    eval_dataset: Any = None,
    resume: bool = False,
    device: str | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    stop_at: int | None = None,
) -> TrainResult:
    """Train (or resume) a supernet into the run directory ``out_dir``.

    :param dataset: a dataset of ``(image in [-1,1], label)``; default ``load_dataset(config.dataset)``.
    :param eval_dataset: images for the per-width eval loss; default the dataset's test split when it
        has one, else the training images.
    :param resume: continue from ``out_dir``'s latest checkpoint (fresh start if there is none).
        Without it, an ``out_dir`` that already holds a checkpoint is an error.
    :param callback: called on rank 0 after every step with ``{"step", "losses", "lr", ...}``.
    :param stop_at: stop (checkpointing) once this step is reached, as if interrupted.
    :return: where it ended; ``interrupted`` is set when a signal (or ``stop_at``) stopped it early.
    """
    started = time.time()
    if config.dropout is not None:
        model_config = dataclasses.replace(model_config, dropout=config.dropout)
    dev0 = pick_device(device)
    dist_env = DistEnv.from_env(dev0.type)
    dev = pick_device(device, dist_env.local_rank) if dev0.type == "cuda" else dev0
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        trainer = Trainer(model_config, config, Path(out_dir), dev, dist_env)
        trainer.prepare(resume)  # checks a run being resumed before any data is read
        data_opts = {"root": data_root, "download": download, "verify": verify}
        trainer.dataset, trainer.eval_dataset = _load_datasets(
            config, model_config, dataset, eval_dataset, data_opts, dist_env
        )
        trainer.create_out_dir()
        return trainer.run(progress=progress, callback=callback, stop_at=stop_at, started=started)
    finally:
        dist_env.close()


def _load_datasets(
    config: TrainConfig,
    model_config: UNetConfig,
    dataset: Any,
    eval_dataset: Any,
    data_opts: Mapping[str, Any],
    dist_env: DistEnv,
) -> tuple[Any, Any]:
    size, ch = model_config.image_size, model_config.in_channels
    opts = {
        "image_size": size,
        "channels": ch,
        "root": data_opts.get("root"),
        "verify": data_opts.get("verify"),
    }
    if dataset is None:
        if data_opts.get("download"):  # one process downloads, the others wait and then read
            if dist_env.rank == 0:
                load_dataset(config.dataset, split="train", download=True, **opts)
            dist_env.barrier()
        dataset = load_dataset(config.dataset, split="train", **opts)
    if eval_dataset is None:
        has_test = config.dataset in ("digits", "cifar10")
        eval_dataset = load_dataset(config.dataset, split="test", **opts) if has_test else dataset
    shape = tuple(dataset[0][0].shape)
    if shape != (ch, size, size):
        raise ConfigError(
            f"dataset {config.dataset!r} gives images of shape {shape}, the model expects {(ch, size, size)}"
        )
    return dataset, eval_dataset


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _fmt_losses(losses: Mapping[float, float]) -> str:
    return " ".join(f"{format_width(w)}={v:.4f}" for w, v in sorted(losses.items()))


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


class _NoBar:
    def set_postfix_str(self, *a: Any, **k: Any) -> None: ...
    def update(self, *a: Any) -> None: ...
    def write(self, *a: Any) -> None: ...
    def unpause(self) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
