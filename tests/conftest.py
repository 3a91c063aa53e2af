"""Shared test set-up: Pyro validation on, a clean parameter store, and a private data cache."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    import pyro

    monkeypatch.setenv("GRAM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gram-cache"))
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
