"""Typed configuration of one SAE and of a training run.

Plain dataclasses (``sae/`` imports torch/numpy only), checked in ``__post_init__``
so a bad value fails before any tensor is allocated. Field names are the names used
everywhere else: CLI options, flow parameters, MLflow params and ``cfg.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

# Bump when cfg.json gains a field that old readers cannot ignore.
# 2: train.checkpoint_every_s. 3: sae.arch, prefixes, matryoshka_selection, threshold_decay
# (a file without them is a TopK SAE: their defaults). 4: train.stacked.
CFG_FORMAT_VERSION = 4

# The paper's dead-latent window: 266 steps, about one epoch of astro-ph at batch 1024.
PAPER_DEAD_STEPS = 266

_CELL_NAME = re.compile(
    r"^(?P<domain>.+)_(?P<k>\d+)_(?P<n>\d+)_(?P<batch>\d+)(?:_(?P<arch>[a-z][a-z_]*))?$"
)

# Each choice list is declared here only: the fields below, their checks, the sweep's
# options, its Prefect form and its validation all read these aliases.
Arch = Literal["topk", "batchtopk", "matryoshka"]
Selection = Literal["topk", "batchtopk"]
LrSchedule = Literal["constant", "cosine"]
ComputeDtype = Literal["float32", "bfloat16"]
Stacking = Literal["auto", "on", "off"]

# A BatchTopK code is stored fixed-width, [B, w] values and indices padded with zeros, so
# the sparse ops (Triton and torch) serve it unchanged: w = min(n, 4k). A sample that the
# batch would give more than 4k latents keeps its largest 4k (then fewer than k*B are kept
# in that batch); wider costs every sparse op in proportion.
BATCHTOPK_WIDTH_FACTOR = 4

# Matryoshka prefixes by default: the paper grid's n values as fractions of its largest
# (3072, 4608, 6144, 9216 of 12288), so n = 12288 nests exactly the grid's dictionaries.
_PAPER_PREFIX_FRACTIONS = (3072 / 12288, 4608 / 12288, 6144 / 12288, 9216 / 12288)


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent."""


@dataclass(frozen=True)
class SAEConfig:
    """Shape and loss settings of one TopK SAE (one grid cell)."""

    d_in: int
    """Embedding dimension d."""
    n_latents: int
    """Dictionary size n."""
    k: int
    """Active latents per sample."""
    k_aux: int | None = None
    """Latents in the AuxK reconstruction; None means 2k, as in the paper's code."""
    aux_coef: float = 1.0 / 32.0
    """Weight of the AuxK loss."""
    dead_threshold_samples: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "A latent is dead (AuxK trains it) once it has not fired for this many "
            "training samples. Default: the smaller of 266 x batch_size (the paper's 266 "
            "steps, about one epoch of its corpus) and one epoch of the training split."
        },
    )
    """None is decided by the trainer when it sees the data (:func:`resolve_dead_threshold`);
    cfg.json records the number used. A model that never met a trainer counts the paper's
    266 x 1024."""
    multi_topk: bool = False
    """Also reconstruct from the top 4k latents, with weight 1/8 (Multi-TopK)."""
    arch: Arch = dataclasses.field(
        default="topk",
        metadata={
            "help": "topk: each sample's top k latents (the paper). batchtopk: the top k x "
            "batch of the whole batch in training, a learned threshold at inference "
            "(Bussmann et al. 2024). matryoshka: nested prefixes of the dictionary, each "
            "trained to reconstruct alone (Bussmann et al. 2025)."
        },
    )
    prefixes: tuple[int, ...] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Matryoshka prefix sizes, ascending, the last = n_latents. Default: "
            "n x (1/4, 3/8, 1/2, 3/4, 1), the paper grid's n values for n = 12288."
        },
    )
    """Resolved to numbers in ``__post_init__`` for ``arch="matryoshka"`` (cfg.json records
    them); None for the other archs."""
    matryoshka_selection: Selection = dataclasses.field(
        default="topk",
        metadata={
            "help": "How a Matryoshka SAE selects latents: topk (per sample, as the grid's "
            "other cells, so prefixes compare with them at equal k) or batchtopk (as "
            "Bussmann et al. 2025)."
        },
    )
    threshold_decay: float = dataclasses.field(
        default=0.99,
        metadata={
            "help": "BatchTopK inference threshold: EMA decay of the smallest activation "
            "kept per training batch, bias-corrected as Adam's moments (no early batch "
            "outweighs the later ones)."
        },
    )

    def __post_init__(self) -> None:
        _positive("d_in", self.d_in)
        _positive("n_latents", self.n_latents)
        if self.k <= 0:
            raise ConfigError(f"k must be positive, got k={self.k}")
        if self.k > self.n_latents:
            raise ConfigError(
                f"k={self.k} is larger than n_latents={self.n_latents}: "
                "a TopK SAE cannot select more latents than it has"
            )
        if self.k_aux is not None and not 0 < self.k_aux <= self.n_latents:
            raise ConfigError(f"k_aux must be in 1..n_latents={self.n_latents}, got {self.k_aux}")
        if self.aux_coef < 0:
            raise ConfigError(f"aux_coef must be >= 0, got {self.aux_coef}")
        if self.dead_threshold_samples is not None and self.dead_threshold_samples <= 0:
            raise ConfigError(
                f"dead_threshold_samples must be positive, got {self.dead_threshold_samples}"
            )
        self._check_arch()

    def _check_arch(self) -> None:
        _one_of("arch", self.arch, Arch)
        _one_of("matryoshka_selection", self.matryoshka_selection, Selection)
        if self.arch != "matryoshka":
            if self.prefixes is not None:
                raise ConfigError(
                    f"prefixes are Matryoshka prefix sizes: set arch='matryoshka' to use "
                    f"them (arch={self.arch!r})"
                )
            if self.matryoshka_selection != "topk":
                raise ConfigError(
                    f"matryoshka_selection applies to arch='matryoshka' only (arch={self.arch!r})"
                )
        if self.multi_topk and self.arch != "topk":
            raise ConfigError(f"multi_topk is defined for arch='topk' only (arch={self.arch!r})")
        if not 0.0 <= self.threshold_decay < 1.0:
            raise ConfigError(f"threshold_decay must be in [0, 1), got {self.threshold_decay}")
        if self.arch == "matryoshka":
            prefixes = self.prefixes
            if prefixes is None:
                n = self.n_latents
                prefixes = sorted({max(1, round(n * f)) for f in _PAPER_PREFIX_FRACTIONS} | {n})
            prefixes = tuple(prefixes)
            if any(not isinstance(m, int) or isinstance(m, bool) for m in prefixes):
                raise ConfigError(f"prefixes must be integers, got {list(prefixes)}")
            if not prefixes or prefixes[-1] != self.n_latents:
                raise ConfigError(
                    f"the last prefix must be n_latents={self.n_latents} (the whole "
                    f"dictionary), got prefixes={list(prefixes)}"
                )
            if prefixes[0] < 1 or any(a >= b for a, b in itertools.pairwise(prefixes)):
                raise ConfigError(
                    f"prefixes must be positive and strictly ascending, got {list(prefixes)}"
                )
            object.__setattr__(self, "prefixes", prefixes)

    @property
    def selection(self) -> Selection:
        """How latents are chosen in training: per sample (topk) or per batch (batchtopk)."""
        if self.arch == "batchtopk" or (
            self.arch == "matryoshka" and self.matryoshka_selection == "batchtopk"
        ):
            return "batchtopk"
        return "topk"

    @property
    def code_width(self) -> int:
        """Slots of a code ([B, w] values and indices): k for TopK (4k with Multi-TopK);
        min(n, 4k) for BatchTopK, whose samples hold varying counts padded with zeros."""
        if self.selection == "batchtopk":
            return min(BATCHTOPK_WIDTH_FACTOR * self.k, self.n_latents)
        return self.k_encode

    @property
    def name_suffix(self) -> str:
        """Cell-name suffix telling archs of the same (k, n) apart: '' for the paper's TopK."""
        if self.arch == "topk":
            return ""
        if self.arch == "matryoshka" and self.matryoshka_selection == "batchtopk":
            return "_matryoshka_batchtopk"
        return f"_{self.arch}"

    @property
    def dead_threshold(self) -> int:
        """The dead-latent threshold in force, in samples."""
        if self.dead_threshold_samples is None:
            return PAPER_DEAD_STEPS * 1024
        return self.dead_threshold_samples

    @property
    def effective_k_aux(self) -> int:
        return min(self.k_aux if self.k_aux is not None else 2 * self.k, self.n_latents)

    @property
    def k_encode(self) -> int:
        """How many latents the encoder selects: 4k with Multi-TopK, else k."""
        return min(4 * self.k, self.n_latents) if self.multi_topk else self.k


def resolve_dead_threshold(cfg: SAEConfig, batch_size: int, n_train: int) -> SAEConfig:
    """``cfg`` with the default dead-latent rule made concrete for this data.

    The paper's window is 266 steps because that was about one epoch of its corpus; on a
    small corpus 266 steps are many epochs, no latent ever counts as dead and AuxK never
    acts, so the window is also capped at one epoch.
    """
    if cfg.dead_threshold_samples is not None:
        return cfg
    window = min(PAPER_DEAD_STEPS * batch_size, n_train)
    return dataclasses.replace(cfg, dead_threshold_samples=window)


def _knob(default: Any, help: str) -> Any:
    """A training setting with its one default and its one help text: the sweep's
    parameters, its command-line options and the Prefect form are derived from these."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every cell of a pack (one pass over each batch)."""

    batch_size: int = _knob(1024, "Samples per training step.")
    lr: float = _knob(1e-4, "Adam learning rate after warm-up.")
    epochs: int = _knob(50, "Passes over the training split.")
    warmup_steps: int = _knob(
        0, "Linear learning-rate warm-up from 0, in steps (the paper's code has none)."
    )
    # RUF009 is a false alarm: _knob is a dataclasses.field, and the default a string (ruff
    # tells an immutable default by a plain annotation, not through a Literal alias).
    lr_schedule: LrSchedule = _knob(  # noqa: RUF009
        "constant", "After warm-up: constant (the paper), or cosine decay to 0 at the last step."
    )
    grad_clip: float = _knob(1.0, "Global gradient-norm clip per cell; 0 disables it.")
    adam_betas: tuple[float, float] = _knob((0.9, 0.999), "Adam's (beta1, beta2).")
    adam_eps: float = _knob(1e-8, "Adam's epsilon.")
    seed: int = _knob(0, "Seeds the data order and, with (k, n), each cell's initialisation.")
    compute_dtype: ComputeDtype = _knob(  # noqa: RUF009
        "float32",
        "Dtype of the encoder matmul (bfloat16: tensor cores on a GPU); parameters, sums "
        "and the optimiser stay float32.",
    )
    eval_fraction: float = _knob(
        0.05, "Held-out share of the data used for metrics, when no eval split is given."
    )
    checkpoint_every_s: float = _knob(
        60.0,
        "Checkpoint at an epoch end once this long has passed since the last one (a "
        "killed run loses at most this much work; the final one is always written); "
        "0: every epoch.",
    )
    checkpoint_every_steps: int = _knob(0, "Also checkpoint every this many steps (0: never).")
    log_every_steps: int = _knob(10, "Training metrics every this many steps.")
    stacked: Stacking = _knob(  # noqa: RUF009
        "auto",
        "on: step the cells of equal n and arch as one stack (one top-k, one fused Adam, "
        "no host sync; the per-cell weights within 1e-6), off: cell by cell. auto: on "
        "CUDA, where a pack's step is bound by launches and syncs; off on CPU, so CPU runs "
        "keep the per-cell figures.",
    )
    geometric_median_iters: int = _knob(
        20, "Weiszfeld iterations for the pre-bias init; 0 uses the coordinate-wise median."
    )

    #: Settings that change how a run is watched, saved or issued, never its weights (a
    #: stacked step gives the per-cell weights within 1e-6, so a run may resume either way).
    NOT_IN_WEIGHTS = ("checkpoint_every_s", "checkpoint_every_steps", "log_every_steps", "stacked")

    def weight_key(self) -> dict[str, Any]:
        """The settings that decide the trained weights (with the cells, data and code)."""
        return self.weights_of(to_dict(self))

    @classmethod
    def weights_of(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """:meth:`weight_key` of settings as saved (``to_dict``, possibly by older code)."""
        return {k: v for k, v in settings.items() if k not in cls.NOT_IN_WEIGHTS}

    def __post_init__(self) -> None:
        _positive("batch_size", self.batch_size)
        _positive("epochs", self.epochs)
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _one_of("lr_schedule", self.lr_schedule, LrSchedule)
        _one_of("compute_dtype", self.compute_dtype, ComputeDtype)
        _one_of("stacked", self.stacked, Stacking)
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.checkpoint_every_steps < 0 or self.log_every_steps < 0:
            raise ConfigError("checkpoint_every_steps and log_every_steps must be >= 0")
        if self.checkpoint_every_s < 0:
            raise ConfigError(f"checkpoint_every_s must be >= 0, got {self.checkpoint_every_s}")
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))


@dataclass(frozen=True)
class RunInfo:
    """Where the data came from; saved in cfg.json so a checkpoint explains itself."""

    embedder: str = "unknown"
    data_snapshot: str = "unknown"
    domain: str = "data"
    code_version: str = "unknown"


#: Names the released checkpoints gave their domains where dropping separators would not.
_RELEASED_PREFIXES = {"astro-ph": "astroPH"}


def cell_name(domain: str, k: int, n_latents: int, batch_size: int, suffix: str = "") -> str:
    """``{domain}_{k}_{n}_{batch}`` as the released checkpoints name them: an arXiv domain
    without its ``.`` and ``-`` (``cs.LG`` -> ``csLG_128_3072_256``, ``gr-qc`` ->
    ``grqc_16_3072_1024``, ``cs.LG+stat.ML`` -> ``csLG+statML_...``, ``all`` -> ``all_...``),
    but ``astro-ph`` -> ``astroPH_16_3072_1024`` as released. ``suffix``
    (:attr:`SAEConfig.name_suffix`, e.g. ``_matryoshka``) follows for the archs other than
    TopK, so they never share a folder with the grid's TopK cell."""
    prefix = _RELEASED_PREFIXES.get(domain) or re.sub(r"[.-]", "", domain)
    return f"{prefix}_{k}_{n_latents}_{batch_size}{suffix}"


def parse_cell_name(name: str) -> tuple[str, int, int, int]:
    """``csLG_128_3072_256`` -> (``csLG``, 128, 3072, 256); an arch suffix
    (``csLG_128_12288_256_matryoshka``) is accepted and not returned."""
    m = _CELL_NAME.match(name)
    if m is None:
        raise ConfigError(
            f"{name!r} is not a cell name of the form {{domain}}_{{k}}_{{n}}_{{batch}}"
        )
    return m["domain"], int(m["k"]), int(m["n"]), int(m["batch"])


def to_dict(obj: Any) -> dict[str, Any]:
    d = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    """Build a config dataclass, naming unknown keys instead of silently dropping them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{what}: unknown field(s) {unknown}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


def _one_of(name: str, value: Any, choices: Any) -> None:
    """``value`` is one of the ``Literal`` alias ``choices`` (the annotations are not checked
    at run time, and cfg.json or a caller may hold anything)."""
    allowed = typing.get_args(choices)
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
