"""Training a slimmable supernet: the public names, re-exported from the modules that hold them.

- :mod:`ddsm_core.recipes`: ``TrainConfig``, the presets and ``resolve_recipe`` (preset + overrides);
- :mod:`ddsm_core.train_step`: the sandwich-rule step, its random draws, EMA, LR schedule;
- :mod:`ddsm_core.train_eval`: the per-width eval loss and sample grids;
- :mod:`ddsm_core.trainer`: the loop, checkpoints, stop requests (``train``, ``TrainResult``);
- :mod:`ddsm_core.distributed`: DDP setup; :mod:`ddsm_core.device`: device choice.
"""

from ddsm_core.device import pick_device
from ddsm_core.recipes import TRAIN_PRESETS, TrainConfig, resolve_recipe
from ddsm_core.train_eval import WidthLosses, eval_width_losses, sample_width_grid
from ddsm_core.train_step import ema_update, lr_factor, sandwich_widths, step_draws, train_step
from ddsm_core.trainer import TrainingError, TrainResult, train

__all__ = [
    "TRAIN_PRESETS",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "WidthLosses",
    "ema_update",
    "eval_width_losses",
    "lr_factor",
    "pick_device",
    "resolve_recipe",
    "sample_width_grid",
    "sandwich_widths",
    "step_draws",
    "train",
    "train_step",
]
