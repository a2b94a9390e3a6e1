"""Shared fixtures for the engine suites (kept tiny on purpose)."""

import pytest

import simplevector as sv


@pytest.fixture
def db(tmp_path):
    """A fresh writer database with the checkpointer off; closed after the test."""
    handle = sv.open(tmp_path / "db", checkpoint_interval=0)
    yield handle
    handle.close()
