"""SAELens's folder of a TopK SAE, to and from our :class:`sae.model.TopKSAE`.

The layout SAELens 6.x's ``SAE.load_from_disk(folder)`` reads (checked against the code
of sae-lens 6.54.12: ``sae_lens_disk_loader``, ``TopKSAEConfig``, ``TopKSAE``):

    cfg.json                  architecture "topk", d_in, d_sae, k, dtype, device,
                              apply_b_dec_to_input, normalize_activations,
                              reshape_activations, rescale_acts_by_decoder_norm, metadata
    sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
                              b_dec [d_in] (loaded strictly: no other tensor)
    sparsity.safetensors      optional: "sparsity" [d_sae], log10(feature density + 1e-10)

SAELens's TopK SAE computes

    hidden = (x - b_dec) @ W_enc + b_enc                       [B, d_sae]
    acts   = scatter(relu(topk(hidden, k)))                    [B, d_sae]
    x_hat  = acts @ W_dec + b_dec                              [B, d_in]

(b_dec subtracted only with ``apply_b_dec_to_input``; with
``rescale_acts_by_decoder_norm`` hidden is scaled by each decoder row's norm and acts
divided by it before decoding). Ours is the same with b_pre = b_dec, b_lat = b_enc and
our W_enc [n, d] its transpose: the top k first, then the ReLU of the k kept values. So
an export is a transpose and a rename, and equals ours to float rounding (ours
recomputes the k kept pre-activations as dot products, not from the matmul). An import
folds what ours lacks into the weights, exactly: no pre-bias on the input ->
b_lat = b_enc + b_dec @ W_enc; rescaling -> W_enc and b_enc times the decoder norms,
W_dec's rows divided by them (SAELens's own fold for TopK).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sae.config import ConfigError, SAEConfig
from sae.model import TopKSAE
from tasks.interop import InteropInputError

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
#: The release whose loader this layout was checked against. Written as the metadata's
#: ``sae_lens_version``: without one SAELens reads a cfg as pre-6.0 and drops its metadata.
SAELENS_VERSION = "6.54.12"
#: Our block of the cfg's metadata: domain, cell, embedder, data snapshot, ...
OWN_METADATA = "arxiv_sae"
#: log10 of a density of 0 is -inf; SAELens's trainer adds this first.
_SPARSITY_EPS = 1e-10


def saelens_cfg(model: TopKSAE, metadata: dict[str, Any]) -> dict[str, Any]:
    """cfg.json of ``model`` in SAELens's layout; ``metadata`` goes into its metadata."""
    _check_exportable(model)
    return {
        "architecture": "topk",
        "d_in": model.d_in,
        "d_sae": model.n_latents,
        # What our encode selects: 4k with Multi-TopK, so SAELens's codes equal ours.
        "k": model.cfg.k_encode,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {"sae_lens_version": SAELENS_VERSION, **metadata},
    }


def saelens_tensors(model: TopKSAE) -> dict[str, torch.Tensor]:
    """The four tensors of sae_weights.safetensors, float32, SAELens's names and shapes."""

    def plain(t: torch.Tensor) -> torch.Tensor:
        return t.detach().float().cpu().contiguous()

    return {
        "W_enc": plain(model.W_enc.T),
        "b_enc": plain(model.b_lat),
        "W_dec": plain(model.W_dec),
        "b_dec": plain(model.b_pre),
    }


def write_saelens(
    model: TopKSAE,
    folder: Path,
    metadata: dict[str, Any],
    density_N: np.ndarray | None = None,
) -> None:
    """cfg.json, sae_weights.safetensors and, given the latents' densities [n], the
    sparsity file, into ``folder`` (the caller renames the folder into place)."""
    cfg = saelens_cfg(model, metadata)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(saelens_tensors(model), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    if density_N is not None:
        log_sparsity = torch.from_numpy(np.log10(np.asarray(density_N) + _SPARSITY_EPS))
        save_file({"sparsity": log_sparsity.float().contiguous()}, str(folder / SPARSITY_FILE))


def read_saelens(folder: Path) -> tuple[TopKSAE, dict[str, Any]]:
    """(our TopK SAE with SAELens's encode and decode, the folder's cfg), or
    InteropInputError naming what makes ``folder`` no SAELens TopK SAE."""
    cfg = _read_cfg(folder)
    arch = _architecture(cfg)
    if arch != "topk":
        raise InteropInputError(
            f"{folder} holds a SAELens {arch!r} SAE; only TopK SAEs (architecture 'topk') import"
        )
    d_in, d_sae = _positive(cfg, "d_in", folder), _positive(cfg, "d_sae", folder)
    k = _positive(cfg, "k", folder, (cfg.get("activation_fn_kwargs") or {}).get("k"))
    # A pre-6.0 cfg wrote no normalisation as false or null.
    plain = {"normalize_activations": ("none", False, None), "reshape_activations": ("none",)}
    for name, fine in plain.items():
        value = cfg.get(name, "none")
        if value not in fine:
            raise InteropInputError(
                f"{folder / CFG_FILE}: {name} is {value!r}; only 'none' imports (the "
                "embeddings here are used as they are)"
            )
    tensors = _read_weights(folder, d_in, d_sae)
    if not cfg.get("apply_b_dec_to_input", True):
        tensors["b_enc"] = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]
    if cfg.get("rescale_acts_by_decoder_norm", False):
        norms = tensors["W_dec"].norm(dim=1).clamp_min(1e-8)
        tensors["W_enc"] = tensors["W_enc"] * norms
        tensors["b_enc"] = tensors["b_enc"] * norms
        tensors["W_dec"] = tensors["W_dec"] / norms[:, None]
    try:
        model = TopKSAE(SAEConfig(d_in=d_in, n_latents=d_sae, k=k))
    except ConfigError as exc:
        raise InteropInputError(f"{folder / CFG_FILE}: {exc}") from None
    with torch.no_grad():
        model.W_enc.copy_(tensors["W_enc"].T)
        model.b_lat.copy_(tensors["b_enc"])
        model.W_dec.copy_(tensors["W_dec"])
        model.b_pre.copy_(tensors["b_dec"])
    return model.eval(), cfg


def own_metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    """What an export of ours wrote into the cfg's metadata ({} for another tool's SAE)."""
    metadata = cfg.get("metadata")
    block = metadata.get(OWN_METADATA) if isinstance(metadata, dict) else None
    return block if isinstance(block, dict) else {}


def _check_exportable(model: TopKSAE) -> None:
    if model.cfg.selection != "topk":
        raise InteropInputError(
            f"a {model.cfg.arch} SAE with {model.cfg.selection} selection keeps, at "
            "inference, the latents above a learned threshold: SAELens's topk would not "
            "give its codes; export it with --format safetensors"
        )


def _read_cfg(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise InteropInputError(f"{folder} is not a folder")
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise InteropInputError(f"{folder} is not a SAELens SAE folder: it has no {name}")
    path = folder / CFG_FILE
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InteropInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise InteropInputError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _architecture(cfg: dict[str, Any]) -> str:
    """SAELens 6's ``architecture``; a pre-6.0 cfg says TopK by its activation_fn."""
    if "architecture" in cfg:
        return str(cfg["architecture"])
    return "topk" if cfg.get("activation_fn") == "topk" else "standard"


def _positive(cfg: dict[str, Any], name: str, folder: Path, fallback: Any = None) -> int:
    value = cfg.get(name, fallback)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InteropInputError(
            f"{folder / CFG_FILE}: {name} must be a positive integer, got {value!r}"
        )
    return value


def _read_weights(folder: Path, d_in: int, d_sae: int) -> dict[str, torch.Tensor]:
    """The four tensors as float32, each of the shape the cfg implies."""
    path = folder / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise InteropInputError(f"{path}: not a readable safetensors file ({exc})") from None
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise InteropInputError(
            f"{path}: a TopK SAE holds exactly {sorted(want)}; "
            + "; ".join(
                f"{what} {names}"
                for what, names in (("missing", missing), ("extra", extra))
                if names
            )
        )
    for name, shape in want.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise InteropInputError(
                f"{path}: {name} has shape {list(got)}, but its cfg (d_in={d_in}, "
                f"d_sae={d_sae}) needs {list(shape)}"
            )
        if not torch.isfinite(tensors[name]).all():
            raise InteropInputError(f"{path}: {name} holds NaN or inf values")
    return {name: tensors[name].float() for name in want}
