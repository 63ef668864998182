"""SAELens's layout (:mod:`tasks.interop.saelens`). With sae-lens installed, an export
loads through its own ``SAE.load_from_disk`` with encode and decode equal to ours, and a
SAE it saved imports with equal outputs. Always: the export holds the documented schema,
and SAELens's TopK math (as in sae-lens 6.54.12's ``TopKSAE``), written here in plain
torch, equals ours; imports fold SAELens's options exactly; bad folders are refused in
one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sae.config import SAEConfig
from sae.model import TopKSAE
from tasks.interop import InteropInputError
from tasks.interop.saelens import (
    CFG_FILE,
    OWN_METADATA,
    SAELENS_VERSION,
    SPARSITY_FILE,
    WEIGHTS_FILE,
    read_saelens,
    write_saelens,
)

HAS_SAELENS = importlib.util.find_spec("sae_lens") is not None
needs_saelens = pytest.mark.skipif(not HAS_SAELENS, reason="sae-lens is not installed")
D, N, K = 24, 96, 6


def make_model(cfg: SAEConfig | None = None, seed: int = 0) -> TopKSAE:
    """A TopK SAE with every parameter random (biases too), decoder rows unit norm."""
    gen = torch.Generator().manual_seed(seed)
    model = TopKSAE(cfg or SAEConfig(d_in=D, n_latents=N, k=K), generator=gen)
    with torch.no_grad():
        model.W_enc.copy_(torch.randn(model.W_enc.shape, generator=gen))
        model.b_lat.copy_(0.1 * torch.randn(model.b_lat.shape, generator=gen))
        model.b_pre.copy_(0.1 * torch.randn(model.b_pre.shape, generator=gen))
    return model.eval()


def inputs(rows: int = 64, seed: int = 1) -> torch.Tensor:
    x = torch.randn(rows, D, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def ours_dense(model: TopKSAE, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations [B, n] with our codes scattered, our reconstruction [B, d])."""
    values, indices = model.encode(x_BD)
    acts = torch.zeros(x_BD.shape[0], model.n_latents).scatter_(1, indices, values)
    return acts, model.decode(values, indices)


def saelens_math(cfg: dict, t: dict, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens 6's TopKSAE.encode and .decode of ``x``, from a folder's cfg and tensors."""
    sae_in = x_BD - t["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    hidden = sae_in @ t["W_enc"] + t["b_enc"]
    norms = t["W_dec"].norm(dim=-1)
    rescale = cfg.get("rescale_acts_by_decoder_norm", False)
    if rescale:
        hidden = hidden * norms
    top = torch.topk(hidden, k=cfg["k"], dim=-1, sorted=False)
    acts = torch.zeros_like(hidden).scatter_(-1, top.indices, top.values.relu())
    x_hat = (acts / norms if rescale else acts) @ t["W_dec"] + t["b_dec"]
    return acts, x_hat


def export(tmp_path: Path, model: TopKSAE, density=None) -> Path:
    out = tmp_path / "export"
    write_saelens(model, out, {OWN_METADATA: {"cell": "csLG_6_96_32"}}, density)
    return out


def test_the_export_holds_saelens_documented_schema_and_math(tmp_path):
    model = make_model()
    density = np.linspace(0, 0.5, N)
    out = export(tmp_path, model, density)
    assert sorted(p.name for p in out.iterdir()) == sorted([CFG_FILE, SPARSITY_FILE, WEIGHTS_FILE])
    cfg = json.loads((out / CFG_FILE).read_text())
    assert {k: cfg[k] for k in ("architecture", "d_in", "d_sae", "k")} == {
        "architecture": "topk",
        "d_in": D,
        "d_sae": N,
        "k": K,
    }
    assert cfg["apply_b_dec_to_input"] is True and cfg["rescale_acts_by_decoder_norm"] is False
    assert cfg["normalize_activations"] == cfg["reshape_activations"] == "none"
    assert (cfg["dtype"], cfg["device"]) == ("float32", "cpu")
    assert cfg["metadata"]["sae_lens_version"] == SAELENS_VERSION
    assert cfg["metadata"][OWN_METADATA] == {"cell": "csLG_6_96_32"}

    t = load_file(str(out / WEIGHTS_FILE))
    shapes = {name: tuple(v.shape) for name, v in t.items()}
    assert shapes == {"W_enc": (D, N), "b_enc": (N,), "W_dec": (N, D), "b_dec": (D,)}
    assert all(v.dtype == torch.float32 for v in t.values())
    torch.testing.assert_close(t["W_enc"], model.W_enc.detach().T)
    torch.testing.assert_close(t["b_dec"], model.b_pre.detach())
    sparsity = load_file(str(out / SPARSITY_FILE))["sparsity"]
    np.testing.assert_allclose(sparsity.numpy(), np.log10(density + 1e-10), rtol=1e-6)

    x = inputs()
    acts, x_hat = saelens_math(cfg, t, x)
    want_acts, want_x_hat = ours_dense(model, x)
    torch.testing.assert_close(acts, want_acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_hat, want_x_hat, atol=1e-5, rtol=1e-5)


@needs_saelens
def test_the_export_loads_in_saelens_with_equal_encode_and_decode(tmp_path):
    from sae_lens import SAE

    model = make_model()
    loaded = SAE.load_from_disk(str(export(tmp_path, model)))
    assert type(loaded).__name__ == "TopKSAE"
    assert (loaded.cfg.d_in, loaded.cfg.d_sae, loaded.cfg.k) == (D, N, K)
    assert loaded.cfg.metadata[OWN_METADATA] == {"cell": "csLG_6_96_32"}
    x = inputs()
    want_acts, want_x_hat = ours_dense(model, x)
    with torch.no_grad():
        acts = loaded.encode(x)
        x_hat = loaded.decode(acts)
    torch.testing.assert_close(acts, want_acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_hat, want_x_hat, atol=1e-5, rtol=1e-5)


def test_multi_topk_exports_the_latents_its_encoder_keeps(tmp_path):
    model = make_model(SAEConfig(d_in=D, n_latents=N, k=K, multi_topk=True))
    out = export(tmp_path, model)
    cfg = json.loads((out / CFG_FILE).read_text())
    assert cfg["k"] == 4 * K
    acts, _ = saelens_math(cfg, load_file(str(out / WEIGHTS_FILE)), inputs())
    torch.testing.assert_close(acts, ours_dense(model, inputs())[0], atol=1e-5, rtol=1e-5)


def test_a_batchtopk_sae_is_refused_for_saelens(tmp_path):
    model = make_model(SAEConfig(d_in=D, n_latents=N, k=K, arch="batchtopk"))
    with pytest.raises(InteropInputError, match="--format safetensors"):
        export(tmp_path, model)
    assert not (tmp_path / "export").exists()


def test_an_export_reads_back_as_the_same_sae(tmp_path):
    model = make_model()
    back, cfg = read_saelens(export(tmp_path, model))
    assert cfg["metadata"][OWN_METADATA]["cell"] == "csLG_6_96_32"
    for name in ("W_enc", "b_lat", "W_dec", "b_pre"):
        torch.testing.assert_close(getattr(back, name), getattr(model, name), atol=0, rtol=0)
    assert back.cfg == model.cfg


def saelens_folder(tmp_path: Path, cfg: dict, tensors: dict) -> Path:
    folder = tmp_path / "theirs"
    folder.mkdir(exist_ok=True)
    (folder / CFG_FILE).write_text(json.dumps(cfg))
    save_file(tensors, str(folder / WEIGHTS_FILE))
    return folder


def their_tensors(seed: int = 3, d: int = D, n: int = N) -> dict[str, torch.Tensor]:
    """SAELens-shaped weights with decoder rows far from unit norm."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d, n, generator=gen),
        "b_enc": 0.1 * torch.randn(n, generator=gen),
        "W_dec": torch.randn(n, d, generator=gen) * torch.rand(n, 1, generator=gen) * 3,
        "b_dec": 0.1 * torch.randn(d, generator=gen),
    }


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("rescale", [False, True])
def test_an_import_folds_saelens_options_exactly(tmp_path, apply_b_dec, rescale):
    cfg = {
        "architecture": "topk",
        "d_in": D,
        "d_sae": N,
        "k": K,
        "dtype": "float32",
        "apply_b_dec_to_input": apply_b_dec,
        "rescale_acts_by_decoder_norm": rescale,
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "model_name": "gpt2"},
    }
    t = their_tensors()
    model, _ = read_saelens(saelens_folder(tmp_path, cfg, t))
    x = inputs()
    acts, x_hat = saelens_math(cfg, t, x)
    got_acts, got_x_hat = ours_dense(model, x)
    torch.testing.assert_close(got_acts, acts, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_x_hat, x_hat, atol=1e-4, rtol=1e-4)


def test_a_pre_6_cfg_of_a_topk_sae_imports(tmp_path):
    cfg = {"d_in": D, "d_sae": N, "activation_fn": "topk", "activation_fn_kwargs": {"k": K}}
    cfg["normalize_activations"] = False
    model, _ = read_saelens(saelens_folder(tmp_path, cfg, their_tensors()))
    assert (model.d_in, model.n_latents, model.k) == (D, N, K)


@needs_saelens
@pytest.mark.parametrize("rescale", [False, True])
def test_a_sae_saelens_saved_imports_with_equal_encode_and_decode(tmp_path, rescale):
    from sae_lens.saes.topk_sae import TopKSAE as TheirTopK
    from sae_lens.saes.topk_sae import TopKSAEConfig

    torch.manual_seed(4)
    theirs = TheirTopK(TopKSAEConfig(d_in=D, d_sae=N, k=K, rescale_acts_by_decoder_norm=rescale))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * (3 if p.ndim == 2 else 0.1))
    theirs.save_model(tmp_path / "saved")
    model, _ = read_saelens(tmp_path / "saved")
    x = inputs()
    with torch.no_grad():
        acts = theirs.encode(x)
        x_hat = theirs.decode(acts)
    got_acts, got_x_hat = ours_dense(model, x)
    torch.testing.assert_close(got_acts, acts, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_x_hat, x_hat, atol=1e-4, rtol=1e-4)


GOOD = {"architecture": "topk", "d_in": D, "d_sae": N, "k": K}


def _broken_cfg(**changes):
    return lambda tmp: saelens_folder(tmp, {**GOOD, **changes}, their_tensors())


def _broken_tensors(**changes):
    def make(tmp):
        t = {k: v for k, v in {**their_tensors(), **changes}.items() if v is not None}
        return saelens_folder(tmp, GOOD, t)

    return make


def _folder_without(name):
    def make(tmp):
        folder = saelens_folder(tmp, GOOD, their_tensors())
        (folder / name).unlink()
        return folder

    return make


def _bad_json(tmp):
    folder = saelens_folder(tmp, GOOD, their_tensors())
    (folder / CFG_FILE).write_text("{not json")
    return folder


def _bad_weights(tmp):
    folder = saelens_folder(tmp, GOOD, their_tensors())
    (folder / WEIGHTS_FILE).write_bytes(b"\x00" * 12)
    return folder


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: tmp / "nowhere", "is not a folder"),
        (_folder_without(CFG_FILE), "it has no cfg.json"),
        (_folder_without(WEIGHTS_FILE), "it has no sae_weights.safetensors"),
        (_bad_json, "not valid JSON"),
        (_bad_weights, "not a readable safetensors file"),
        (_broken_cfg(architecture="jumprelu"), "a SAELens 'jumprelu' SAE; only TopK"),
        (_broken_cfg(architecture="batchtopk"), "a SAELens 'batchtopk' SAE"),
        (_broken_cfg(k=0), "k must be a positive integer, got 0"),
        (_broken_cfg(k=N + 1), "larger than n_latents"),
        (_broken_cfg(d_in="384"), "d_in must be a positive integer, got '384'"),
        (_broken_cfg(normalize_activations="layer_norm"), "normalize_activations is 'layer_norm'"),
        (_broken_cfg(reshape_activations="hook_z"), "reshape_activations is 'hook_z'"),
        (_broken_cfg(d_in=D + 1), "W_enc has shape [24, 96], but its cfg (d_in=25, d_sae=96)"),
        (_broken_cfg(d_sae=N * 2), "W_enc has shape [24, 96], but its cfg (d_in=24, d_sae=192)"),
        (_broken_tensors(W_dec=torch.zeros(D, N)), "W_dec has shape [24, 96]"),
        (_broken_tensors(b_enc=None), "missing ['b_enc']"),
        (_broken_tensors(threshold=torch.zeros(N)), "extra ['threshold']"),
        (_broken_tensors(b_dec=torch.full((D,), float("nan"))), "b_dec holds NaN"),
    ],
)
def test_what_is_no_saelens_topk_sae_is_refused_in_one_line(tmp_path, make, says):
    with pytest.raises(InteropInputError) as caught:
        read_saelens(make(tmp_path))
    message = str(caught.value)
    assert says in message and "\n" not in message
