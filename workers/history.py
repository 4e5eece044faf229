"""What a training run leaves besides checkpoints: its loss log and sample grids, uploaded to the
artifact store and recorded on the run (``training_runs.artifacts``). Torch-free.

The record is ``{"log_sha256": sha, "log_step": last logged step, "samples": {"<step>": sha}}``. The log
is uploaded with every checkpoint and otherwise at most every ``log_every_s`` seconds: each upload is a
new content-addressed file, so a per-step upload would fill the store with copies of a growing file.
A grid is uploaded once, when it appears. A run resumed on another machine starts from the uploaded
log, cut at its checkpoint's step, so its curves cover the whole run.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from api.artifacts import ArtifactError, ArtifactStore
from ddsm_core.train_log import LOG_FILE, SAMPLES_DIR, grid_step, log_until, read_log

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0


class RunHistory:
    """The uploaded state of one run folder's log and grids (one per task execution)."""

    def __init__(
        self,
        store: ArtifactStore,
        run_dir: Path,
        recorded: Mapping[str, Any] | None,
        log_every_s: float = LOG_EVERY_S,
    ) -> None:
        self.store, self.run_dir, self.log_every_s = store, run_dir, log_every_s
        self.artifacts: dict[str, Any] = copy.deepcopy(dict(recorded or {}))
        self.artifacts.setdefault("samples", {})
        self._log_at = time.monotonic()

    def restore(self, step: int) -> None:
        """Put the uploaded log (up to ``step``, the checkpoint resumed from) in the run folder."""
        sha = self.artifacts.get("log_sha256")
        if not sha:
            return
        try:
            text = log_until(self.store.get_bytes(sha).decode(errors="replace"), step)
        except ArtifactError as exc:  # the curves lose their start; the training itself does not fail
            log.warning("the run's uploaded loss log is not readable, starting a new one: %s", exc)
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / LOG_FILE).write_text(text)

    def upload(self, checkpoint: bool) -> dict[str, Any] | None:
        """Upload new grids, and the log when ``checkpoint`` or when it is due; the new record, or None
        when nothing changed."""
        changed = False
        samples = self.artifacts["samples"]
        folder = self.run_dir / SAMPLES_DIR
        for path in sorted(folder.glob("*.png")) if folder.is_dir() else ():
            step = grid_step(path)
            if step is not None and str(step) not in samples:
                samples[str(step)] = self.store.put_file(path)
                changed = True
        log = self.run_dir / LOG_FILE
        if log.is_file() and (checkpoint or time.monotonic() - self._log_at >= self.log_every_s):
            self._log_at = time.monotonic()
            sha = self.store.put_file(log)
            if sha != self.artifacts.get("log_sha256"):
                steps = read_log(log.read_text().splitlines())
                self.artifacts |= {"log_sha256": sha, "log_step": max(steps, default=0)}
                changed = True
        return json.loads(json.dumps(self.artifacts)) if changed else None
