"""Settings come from SAE_* variables (and .env), resolved per process, never on import."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.settings import get_settings


def test_store_defaults_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_HOME", str(tmp_path / "h"))
    s = get_settings()
    assert s.home == tmp_path / "h"
    assert s.store == str(tmp_path / "h" / "store")
    assert s.store_is_local


def test_store_can_be_a_folder_or_s3(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_STORE", "s3://bucket/prefix")
    assert not get_settings().store_is_local
    monkeypatch.setenv("SAE_STORE", str(tmp_path / "elsewhere"))
    assert get_settings().store == str(tmp_path / "elsewhere")


def test_dotenv_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv("SAE_HOME")
    monkeypatch.chdir(tmp_path)
    Path(".env").write_text("SAE_HOME=from-dotenv\n")
    assert get_settings().home == tmp_path / "from-dotenv"


def test_bad_device_is_named(monkeypatch):
    monkeypatch.setenv("SAE_DEVICE", "tpu")
    with pytest.raises(ValidationError, match="device"):
        get_settings()


def test_tracking_uri_defaults_to_sqlite_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert get_settings().tracking_uri == f"sqlite:///{tmp_path}/h/mlflow.db"
    assert get_settings().tracking_uri.startswith("sqlite:////")  # absolute: four slashes


def test_standard_variables_are_honoured(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    s = get_settings()
    assert s.tracking_uri == "http://127.0.0.1:5001"
    assert (s.prefect_api_url, s.ray_address) == ("http://127.0.0.1:4200/api", "127.0.0.1:6379")
    monkeypatch.setenv("SAE_STORE", "s3://b/p")
    assert get_settings().storage_options() == {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}
    }


def test_passwords_in_addresses_are_masked(monkeypatch):
    from infra.settings import mask_url

    assert mask_url("postgresql://mlflow:s3cret@db:5432/mlflow") == (
        "postgresql://mlflow:***@db:5432/mlflow"
    )
    assert mask_url("http://127.0.0.1:5001") == "http://127.0.0.1:5001"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u:hunter2@db/mlflow")
    shown = get_settings().effective()
    assert shown["SAE_MLFLOW_TRACKING_URI"] == "postgresql://u:***@db/mlflow"
    assert "hunter2" not in str(shown)


def test_the_cache_defaults_under_home_and_can_move(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("SAE_CACHE_DIR", raising=False)
    assert get_settings().cache_root == (tmp_path / "h" / "cache").resolve()
    monkeypatch.setenv("SAE_CACHE_DIR", str(tmp_path / "shared"))
    assert get_settings().cache_root == tmp_path / "shared"
