"""Segmentation tests run single-threaded: their tensors are tiny, and on a shared 2-core machine intra-op
threads spend more time waiting for each other than computing (10× slower under load)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
