"""The torch-free name lists the API checks requests against equal the torch modules' own."""

from __future__ import annotations

from typing import get_args

from ddsm_core import catalog
from ddsm_core.data import BUILTIN_DATASETS
from ddsm_core.features import DOMAIN_CONFIGS, EXTRACTOR_SPECS
from ddsm_core.schedules import SCHEDULES


def test_the_catalog_names_every_dataset_extractor_and_schedule() -> None:
    assert catalog.DATASETS == BUILTIN_DATASETS
    assert set(catalog.EXTRACTORS) == set(EXTRACTOR_SPECS)
    assert catalog.DOMAIN_DATASETS == tuple(DOMAIN_CONFIGS)
    assert {c.name for c in DOMAIN_CONFIGS.values()} <= set(catalog.EXTRACTORS)
    assert get_args(catalog.NoiseSchedule) == SCHEDULES
