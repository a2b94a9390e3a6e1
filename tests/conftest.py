"""Shared fixtures for the engine suites (kept tiny on purpose)."""

import os

import pytest

# First queries of a process answered in numpy while the kernels load (engine/warmup.py)
# would make a plan depend on which test ran first; tests/test_warmup.py turns it back on
# in the processes it starts. Set before anything is imported, so servers and children
# started by tests inherit it.
os.environ["SIMPLEVECTOR_COLD_QUERIES"] = "0"

import simplevector as sv  # noqa: E402


@pytest.fixture
def db(tmp_path):
    """A fresh writer database with the checkpointer off; closed after the test."""
    handle = sv.open(tmp_path / "db", checkpoint_interval=0)
    yield handle
    handle.close()
