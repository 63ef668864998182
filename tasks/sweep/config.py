"""The parameters of a sweep: one typed model for the CLI, the flow (the Prefect UI form),
MLflow params and cfg.json, checked before anything starts."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.corpus.domains import DOMAINS, UnknownDomainError, get_domain

PAPER_K = [16, 32, 64, 128]
PAPER_N = [3072, 4608, 6144, 9216, 12288]


class SweepInputError(ValueError):
    """The sweep cannot start: no papers, no embeddings, an unknown snapshot."""


class SweepParams(BaseModel):
    """A grid of TopK SAEs (every k x n_latents) per domain, trained on one data snapshot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: list[str] = Field(
        default=["cs.LG"], min_length=1, description=f"Any of {sorted(DOMAINS)}."
    )
    k: list[int] = Field(default=PAPER_K, min_length=1, description="Active latents per sample.")
    n_latents: list[int] = Field(default=PAPER_N, min_length=1, description="Dictionary sizes.")
    batch_size: int = Field(default=1024, gt=0)
    epochs: int = Field(default=50, gt=0)
    lr: float = Field(default=1e-4, gt=0)
    seed: int = Field(default=0, ge=0)
    embedder: str | None = Field(
        default=None, description="'minilm', 'st:<model>' or 'openai:<model>'; None: SAE_EMBEDDER."
    )
    data_snapshot: str | None = Field(
        default=None,
        description="Train on this existing snapshot id; None fixes one from what is embedded.",
    )
    limit: int | None = Field(
        default=None, gt=0, description="Embed and train on at most this many papers per domain."
    )
    source: str | None = Field(
        default=None,
        description="A file or folder of papers to ingest first (any format `sae ingest` reads).",
    )
    gpus_per_pack: float | None = Field(
        default=None, gt=0, le=8, description="GPU share of one pack; None: SAE_PACK_GPUS."
    )
    n_packs: int | None = Field(
        default=None, gt=0, description="Packs per domain; None: one per GPU (one on CPU)."
    )
    checkpoint_every_s: float = Field(
        default=60.0,
        ge=0,
        description="Checkpoint at an epoch end once this long has passed since the last "
        "one (a killed pack loses at most this much work); 0: every epoch.",
    )
    champion_max_dead: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="The champion is the lowest-NMSE cell whose dead fraction is at most this.",
    )

    @field_validator("domains")
    @classmethod
    def _canonical_domains(cls, v: list[str]) -> list[str]:
        # Every spelling (cs_lg, csLG, CS.lg) becomes the canonical name here, at the edge
        # (CLI, Prefect form, deployment): experiments, models and cells are named from it.
        try:
            names = [get_domain(name).name for name in v]
        except UnknownDomainError as exc:
            raise ValueError(str(exc)) from None
        if len(set(names)) != len(names):
            raise ValueError(f"domains repeat: {v} are {names}")
        return names

    @field_validator("k", "n_latents")
    @classmethod
    def _positive_unique(cls, v: list[int]) -> list[int]:
        if any(x <= 0 for x in v):
            raise ValueError(f"values must be positive, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _k_fits_n(self) -> SweepParams:
        bad = [(k, n) for k in self.k for n in self.n_latents if k > n]
        if bad:
            k, n = bad[0]
            raise ValueError(
                f"k={k} is larger than n_latents={n}: a TopK SAE cannot select more latents "
                "than it has (drop that k or that n)"
            )
        return self

    def cells(self) -> list[tuple[int, int]]:
        return [(k, n) for k in self.k for n in self.n_latents]

    def training_key(self) -> dict:
        """What decides every cell's weights, besides its (k, n), the data and the code."""
        return self.model_dump(include={"batch_size", "epochs", "lr", "seed"})


def sweep_id(params: SweepParams, domain_slug: str, snapshot_id: str, code_version: str) -> str:
    """Same training settings, data and code: the same id, so a rerun finds its finished
    cells, and a grid grown by a k or an n trains only the new cells."""
    key = json.dumps(
        [params.training_key(), snapshot_id, code_version], sort_keys=True, default=str
    )
    return f"{domain_slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
