"""The parameters of a sweep: one typed model for the CLI, the flow (the Prefect UI form),
MLflow params and cfg.json, checked before anything starts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sae.config import (
    Arch,
    ComputeDtype,
    ConfigError,
    LrSchedule,
    SAEConfig,
    Selection,
    Stacking,
    TrainConfig,
)
from tasks.corpus.domains import (
    DOMAIN_HELP,
    canonical_name,
    canonical_names,
)

PAPER_K = [16, 32, 64, 128]
PAPER_N = [3072, 4608, 6144, 9216, 12288]


class SweepInputError(ValueError):
    """The sweep cannot start: no papers, no embeddings, an unknown snapshot."""


class SweepFailedError(RuntimeError):
    """Some cells did not finish; the finished ones are recorded."""


def _knob(name: str) -> Any:
    """A library setting as a sweep parameter: its default and help are those of
    :class:`sae.config.TrainConfig` or :class:`sae.config.SAEConfig`, the one place they
    are written, as are its choices (the ``Literal`` aliases) and bounds (checked by the
    dataclass, not repeated here)."""
    f = _TRAIN_FIELDS.get(name) or _SAE_FIELDS[name]
    return Field(default=f.default, description=f.metadata["help"])


_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# The SAEConfig settings a sweep sets for all its cells (the rest are per cell: d_in, k, n).
_SAE_FIELDS = {f.name: f for f in dataclasses.fields(SAEConfig) if "help" in f.metadata}


class GridParams(BaseModel):
    """A pack of TopK SAEs, every k x n_latents cell, and how they are trained.

    Every setting of this model (and of its subclasses) is declared once, here: the
    ``sae`` options, the Prefect form, the MLflow params and cfg.json are derived from
    it. The library's settings take their choices, defaults and help from :mod:`sae.config`,
    and their values are checked by :class:`TrainConfig` (per field) and :class:`SAEConfig`
    (per cell) themselves.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: list[int] = Field(default=PAPER_K, min_length=1, description="Active latents per sample.")
    n_latents: list[int] = Field(
        default=PAPER_N,
        min_length=1,
        description="Dictionary sizes.",
        json_schema_extra={"flags": ["--n"]},
    )
    batch_size: int = _knob("batch_size")
    epochs: int = _knob("epochs")
    lr: float = _knob("lr")
    warmup_steps: int = _knob("warmup_steps")
    lr_schedule: LrSchedule = _knob("lr_schedule")
    grad_clip: float = _knob("grad_clip")
    compute_dtype: ComputeDtype = _knob("compute_dtype")
    stacked: Stacking = _knob("stacked")
    seed: int = _knob("seed")
    checkpoint_every_s: float = _knob("checkpoint_every_s")
    dead_threshold_samples: int | None = _knob("dead_threshold_samples")
    arch: Arch = _knob("arch")
    prefixes: list[int] | None = _knob("prefixes")
    matryoshka_selection: Selection = _knob("matryoshka_selection")
    threshold_decay: float = _knob("threshold_decay")
    n_axis_matryoshka: bool = Field(
        default=False,
        description="Per k, also train one Matryoshka SAE of the largest n with its prefixes "
        "at the grid's n values (cell suffix _matryoshka), beside the dedicated cells.",
    )

    @field_validator("k", "n_latents")
    @classmethod
    def _positive_unique(cls, v: list[int], info: ValidationInfo) -> list[int]:
        if any(x <= 0 for x in v):
            raise ValueError(f"{info.field_name} must be positive, got {v}")
        return sorted(set(v))

    @field_validator("*")
    @classmethod
    def _checked_by_train_config(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name in _TRAIN_FIELDS:
            try:
                TrainConfig(**{info.field_name: v})
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _k_fits_n(self) -> GridParams:
        bad = [(k, n) for k in self.k for n in self.n_latents if k > n]
        if bad:
            k, n = bad[0]
            raise ValueError(
                f"k={k} is larger than n_latents={n}: a TopK SAE cannot select more latents "
                "than it has (drop that k or that n)"
            )
        for k, n in self.cells():
            try:
                SAEConfig(d_in=1, n_latents=n, k=k, **self.sae_options())
            except ConfigError as exc:
                raise ValueError(f"cell (k={k}, n={n}): {exc}") from None
        if self.n_axis_matryoshka:
            if self.arch == "matryoshka" or self.prefixes is not None:
                raise ValueError(
                    "n_axis_matryoshka adds Matryoshka cells nested at the grid's n values: "
                    "it needs arch topk or batchtopk and no prefixes"
                )
            if len(self.n_latents) < 2:
                raise ValueError("n_axis_matryoshka needs at least two n_latents to nest")
        return self

    def n_axis_cells(self) -> list[tuple[int, int]]:
        """The (k, largest n) of each n-axis Matryoshka cell; none unless asked."""
        return [(k, max(self.n_latents)) for k in self.k] if self.n_axis_matryoshka else []

    def n_axis_options(self) -> dict[str, Any]:
        """The SAEConfig settings of the n-axis cells: the grid's, nested at its n values,
        selecting latents as the grid's cells do (so prefix m compares with cell (k, m))."""
        selection = "batchtopk" if self.arch == "batchtopk" else self.matryoshka_selection
        return {
            **self.sae_options(),
            "arch": "matryoshka",
            "prefixes": sorted(self.n_latents),
            "matryoshka_selection": selection,
        }

    def cells(self) -> list[tuple[int, int]]:
        return [(k, n) for k in self.k for n in self.n_latents]

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{name: getattr(self, name) for name in _train_names(type(self))})

    def sae_options(self) -> dict[str, Any]:
        """The :class:`SAEConfig` settings every cell shares."""
        return {
            name: getattr(self, name) for name in type(self).model_fields if name in _SAE_FIELDS
        }

    def training_key(self) -> dict:
        """What decides every cell's weights, besides its (k, n), the data and the code."""
        return {**self.train_config().weight_key(), **self.sae_options()}

    def mlflow_params(self) -> dict[str, str]:
        """The training settings as MLflow params (the grid itself is logged as k, n)."""
        return {k: str(v) for k, v in self.training_key().items()}


def _train_names(model: type[BaseModel]) -> list[str]:
    return [name for name in model.model_fields if name in _TRAIN_FIELDS]


class SweepParams(GridParams):
    """The grid per domain, trained on one data snapshot, recorded in MLflow."""

    domains: list[str] = Field(
        default=["cs.LG"],
        min_length=1,
        description=DOMAIN_HELP,
        json_schema_extra={"argument": "DOMAIN"},
    )
    embedder: str | None = Field(
        default=None,
        description="'minilm', 'st:<model>' or 'openai:<model>'. Default: SAE_EMBEDDER.",
    )
    data_snapshot: str | None = Field(
        default=None,
        description="Train on this existing snapshot id. Default: fix one from what is embedded.",
    )
    limit: int | None = Field(
        default=None, gt=0, description="Embed and train on at most this many papers per domain."
    )
    source: str | None = Field(
        default=None,
        description="A file or folder of papers to ingest first (any format `sae ingest` reads).",
    )
    gpus_per_pack: float | None = Field(
        default=None, gt=0, le=8, description="GPU share of one pack. Default: SAE_PACK_GPUS."
    )
    n_packs: int | None = Field(
        default=None, gt=0, description="Packs per domain. Default: one per GPU (one on CPU)."
    )
    champion_max_dead: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="The champion is the lowest-NMSE cell whose dead fraction is at most this.",
    )
    features: bool = Field(
        default=False,
        description="Then read the features of the champion and, per k, the largest n, as "
        "`sae features` does, in the same run (its Ray and Prefect server).",
    )

    @field_validator("domains")
    @classmethod
    def _canonical_domains(cls, v: list[str]) -> list[str]:
        # Every spelling (cs_lg, csLG, CS.lg) becomes the canonical name here, at the edge
        # (CLI, Prefect form, deployment): experiments, models and cells are named from it.
        return canonical_names(v)


class MatrixParams(GridParams):
    """The grid on one embedding matrix, without the pipeline (``sae train``)."""

    data: str = Field(
        default="synthetic",
        description="'synthetic', or an [N, d] matrix file: .npy, .pt or .safetensors.",
    )
    limit: int | None = Field(default=None, gt=0, description="Use at most this many rows.")
    domain: str = Field(
        default="synthetic",
        description="Label of the cells' names (a known domain in any spelling).",
    )
    run_id: str | None = Field(
        default=None,
        description="Output folder name. Default: derived from the data, the settings and "
        "the code, so a rerun resumes.",
    )

    @field_validator("domain")
    @classmethod
    def _canonical_domain(cls, v: str) -> str:
        return canonical_name(v)  # cs_lg and cs.LG cells: one name, csLG_{k}_{n}_{batch}


def sweep_id(params: GridParams, domain_slug: str, data_key: str, code_version: str) -> str:
    """Same training settings, data and code: the same id, so a rerun finds its finished
    cells, and a grid grown by a k or an n trains only the new cells. ``data_key``: the
    vectors trained on (:attr:`Snapshot.data_key`: embedder and snapshot; a matrix file's
    content id)."""
    key = json.dumps([params.training_key(), data_key, code_version], sort_keys=True, default=str)
    return f"{domain_slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
