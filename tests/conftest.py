"""Shared fixtures: float64 on demand (restored afterwards so other tests keep float32)."""

import jax
import pytest


@pytest.fixture
def x64():
    """Enable float64 for one test (references, finite differences), then restore."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
