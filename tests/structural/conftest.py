"""Structural tests run single-threaded: their models and inputs are small, and on a shared 2-core machine
intra-op threads spend more time waiting for each other than computing (a 0.5 s CPU fine-tuning test took 72 s)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")  # before the module-scoped model fixtures
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
