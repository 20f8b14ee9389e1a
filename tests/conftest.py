"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from mirrord.lab import Lab, create_lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh fake staging cluster (network namespaces); needs root."""
    if os.geteuid() != 0:
        pytest.skip("needs root (not root)")
    lab = create_lab()
    try:
        yield lab
    finally:
        lab.close()
