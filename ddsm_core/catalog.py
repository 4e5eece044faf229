"""Names the API checks at POST without importing torch: bundled datasets, feature extractors and
noise schedules (the training presets are torch-free already: ``ddsm_core.recipes``).

Their real definitions live in torch modules (``data``, ``features``, ``schedules``);
``tests/api/test_validation.py`` proves each list here equals the real one, so a new dataset or
extractor cannot be forgotten here.
"""

from __future__ import annotations

from typing import Literal, get_args

Dataset = Literal["digits", "cifar10"]
DATASETS: tuple[str, ...] = get_args(Dataset)
"""``ddsm_core.data.BUILTIN_DATASETS``."""

DOMAIN_DATASETS: tuple[str, ...] = ("digits",)
"""Datasets with a domain feature extractor (``ddsm_core.features.DOMAIN_CONFIGS``)."""

Extractor = Literal["auto", "domain", "inception", "inception-v3-pool3", "domain:digits-cnn-v1"]
EXTRACTORS: tuple[str, ...] = get_args(Extractor)
"""``ddsm_core.features.EXTRACTOR_SPECS``."""

NoiseSchedule = Literal["linear", "cosine"]
"""``ddsm_core.schedules.SCHEDULES``."""
