from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two cores shared by several jobs: more threads than free cores makes torch spin, not compute. The
    ``ddsm`` commands set their own thread count; it is put back after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
