"""Test-wide settings. Set before torch/triton are imported anywhere."""

import os

# Triton runs through its interpreter on machines without a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from pathlib import Path

import pytest

from sae.synthetic import sparse_dictionary_data


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own SAE_HOME, so none touches another's (or the user's) state."""
    monkeypatch.setenv("SAE_HOME", str(tmp_path / "sae_home"))
    monkeypatch.delenv("SAE_STORE", raising=False)


@pytest.fixture
def make_data():
    return sparse_dictionary_data


@pytest.fixture(scope="session")
def arxiv_data() -> Path:
    """The shared real arXiv sample (``SAE_ARXIV_DATA``, default ``../shared/data/arxiv``)."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "arxiv"
    path = Path(os.environ.get("SAE_ARXIV_DATA", default))
    if not (path / "fixtures").is_dir():
        pytest.skip(f"arXiv sample not found at {path}; set SAE_ARXIV_DATA")
    return path
