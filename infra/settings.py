"""One typed settings object, read from ``SAE_*`` environment variables and an optional ``.env``.

Nothing is read or created on import: call :func:`get_settings` where the settings
are needed, so two processes with different ``SAE_HOME`` never share state.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
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
    s3_endpoint_url: str = Field(
        default="",
        validation_alias=AliasChoices("SAE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
        description="S3-compatible endpoint (MinIO, moto); empty means AWS. Keys come from "
        "the AWS environment or credential chain, never from here.",
    )
    ray_address: str = Field(
        default="",
        validation_alias=AliasChoices("SAE_RAY_ADDRESS", "RAY_ADDRESS"),
        description="A Ray cluster to join; empty starts a local Ray on 127.0.0.1 for the run.",
    )
    mlflow_tracking_uri: str = Field(
        default="",
        validation_alias=AliasChoices("SAE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="An MLflow server or database; empty means a sqlite file under SAE_HOME.",
    )
    prefect_api_url: str = Field(
        default="",
        validation_alias=AliasChoices("SAE_PREFECT_API_URL", "PREFECT_API_URL"),
        description="A Prefect server; empty starts a local one on 127.0.0.1 for the run.",
    )
    pack_gpus: float = Field(
        default=1.0, gt=0, le=8, description="GPU share of one training pack task on a GPU."
    )
    embedder: str = Field(
        default="minilm",
        description="'minilm' (bundled, offline), 'st:<model>' or 'openai:<model>'.",
    )
    embed_shard_size: int = Field(
        default=1024, gt=0, description="Papers per embedding shard (one Ray task each)."
    )
    embed_backend: Literal["auto", "torch", "openvino"] = Field(
        default="auto",
        description="CPU inference of the local embedders: auto picks OpenVINO on CPUs "
        "without native bf16, torch elsewhere (see tasks.embed.local.choose_backend).",
    )
    cache_dir: str = Field(
        default="",
        description="Derived files rebuilt when missing (the exported embedding model); "
        "empty means {home}/cache. On a Ray cluster, a path every node can write.",
    )
    embed_gpus: float = Field(
        default=1.0, gt=0, le=8, description="GPU share of one embedding shard task on a GPU."
    )
    vector_budget_bytes: int = Field(
        default=4 * 2**30,
        gt=0,
        validation_alias=AliasChoices("SAE_VECTOR_BUDGET", "SAE_VECTOR_BUDGET_BYTES"),
        description="Bytes of embedding vectors a training pack or a cell's features hold "
        "in host memory; past it the snapshot is memory-mapped from one .npy file in the "
        "scratch folder and read in pieces, with the same results. A fixed 4 GiB, not a "
        "share of RAM: the flow sets it and the Ray worker (whose RAM the flow cannot see) "
        "obeys it; 4 GiB "
        "holds 700k x 1536 float32 vectors and leaves a 16-24 GiB worker room for the "
        "models, Adam and the other packs.",
    )
    label_api_base: str = Field(
        default="",
        description="An OpenAI-compatible chat API for LLM feature labels (`sae features "
        "--llm-labels N`); empty: offline labels only. Key: SAE_LABEL_API_KEY or "
        "OPENAI_API_KEY, from the environment only.",
    )
    label_model: str = Field(default="gpt-4o-mini", description="The chat model for labels.")
    label_price_in_per_mtok: float | None = Field(
        default=None, ge=0, description="Price of 1M prompt tokens, to show what labels cost."
    )
    label_price_out_per_mtok: float | None = Field(
        default=None, ge=0, description="Price of 1M completion tokens."
    )
    harvest_api_url: str = Field(default="https://export.arxiv.org/api/query")
    harvest_oai_url: str = Field(default="https://oaipmh.arxiv.org/oai")
    harvest_min_interval_s: float = Field(
        default=3.0, ge=0, description="arXiv's terms: one request every 3 seconds."
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
    def cache_root(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else self.home / "cache"

    @property
    def tracking_uri(self) -> str:
        # Four slashes: sqlite wants an absolute path after "sqlite:///".
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    def effective(self) -> dict[str, str]:
        """Every setting as ``sae info`` shows it: defaults resolved, passwords masked."""
        values = {f"SAE_{name.upper()}": str(value) for name, value in self.model_dump().items()}
        values["SAE_MLFLOW_TRACKING_URI"] = self.tracking_uri
        values["SAE_PREFECT_API_URL"] = self.prefect_api_url or "(a local server for the run)"
        values["SAE_RAY_ADDRESS"] = self.ray_address or "(a local Ray for the run)"
        return {k: mask_url(v) for k, v in sorted(values.items())}

    @property
    def store_is_local(self) -> bool:
        return "://" not in self.store or self.store.startswith("file://")

    def storage_options(self) -> dict:
        """fsspec options for the store (endpoint only: credentials stay in the AWS chain)."""
        if self.store_is_local or not self.s3_endpoint_url:
            return {}
        return {"client_kwargs": {"endpoint_url": self.s3_endpoint_url}}

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        # torch: ~10 s on 2 busy cores, for every importer of the settings otherwise.
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def mask_url(value: str) -> str:
    """``scheme://user:***@host/...``: URLs may carry a password (database, S3 gateway)."""
    return re.sub(r"(://[^/:@\s]+):[^/@\s]+@", r"\1:***@", value)


def get_settings() -> Settings:
    return Settings()
