"""One typed settings object, read from ``SAE_*`` environment variables and an optional ``.env``.

Nothing is read or created on import: call :func:`get_settings` where the settings
are needed, so two processes with different ``SAE_HOME`` never share state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SAE_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    home: Path = Field(
        default=Path(".sae"), description="Local state: sqlite files, logs, pid files."
    )
    store: str = Field(
        default="",
        description="Store root: a folder or s3://bucket/prefix. Empty means {home}/store.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where training runs; auto picks CUDA when present."
    )

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _default_store(self) -> Settings:
        if not self.store:
            object.__setattr__(self, "store", str(self.home / "store"))
        elif "://" not in self.store:
            object.__setattr__(self, "store", str(Path(self.store).expanduser().resolve()))
        return self

    @property
    def store_is_local(self) -> bool:
        return "://" not in self.store or self.store.startswith("file://")

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def get_settings() -> Settings:
    return Settings()
