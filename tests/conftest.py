"""Shared fixtures: float64 on demand (restored afterwards so other tests keep float32); JAX's caches cleared after
every test module."""

import jax
import pytest

from helpers import float64


@pytest.fixture
def x64():
    """Enable float64 for one test (references, finite differences), then restore."""
    with float64():
        yield


@pytest.fixture(autouse=True, scope="module")
def fresh_jax_caches():
    """Drop the executables compiled by a test module once it is done. The whole suite in one process compiles
    thousands of XLA CPU executables, each holding its own memory mappings; two full CI runs aborted inside an XLA
    compilation at ~85 % (the 65,530 `vm.max_map_count` limit is the suspected cause)."""
    yield
    jax.clear_caches()
