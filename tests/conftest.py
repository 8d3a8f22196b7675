"""Shared fixtures: float64 on demand (restored afterwards so other tests keep float32)."""

import pytest

from helpers import float64


@pytest.fixture
def x64():
    """Enable float64 for one test (references, finite differences), then restore."""
    with float64():
        yield
