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
