"""The TopK sparse autoencoder (SAE_RECIPE.md, "Model" and "Loss").

    z_pre = W_enc (x - b_pre) + b_lat                 [B, n]
    (I, V) = topk(z_pre, k);  V = relu(V)             [B, k] each
    x_hat  = sum_j V_j * W_dec[I_j] + b_pre           [B, d]

W_dec is stored one latent per contiguous row ([n, d]) and kept at unit row norm.
``b_pre`` starts at a median of the data (:func:`data_median`); the loss is :func:`fvu`.

``SAEConfig.arch`` changes only how latents are selected and what the loss sums:

- ``batchtopk`` (Bussmann et al. 2024): in training the top k*B of relu(z_pre) over the
  whole batch, so samples hold varying counts; at inference every latent with
  z_pre > theta, theta an EMA of the smallest activation kept per training batch (the
  ``threshold`` buffer). Codes stay fixed-width, [B, w] with w = ``cfg.code_width``, a
  row's unused slots holding value 0, so the sparse ops serve them unchanged.
- ``matryoshka`` (Bussmann et al. 2025; Nabeshima 2024): the same code, and the loss is
  the *mean* over prefixes m of the NMSE of the reconstruction from the selected latents
  with index < m. A mean, as in Bussmann et al.'s code, rather than the paper's sum: the
  loss then keeps the scale of one NMSE, so grad_clip and aux_coef mean what they mean
  for the other archs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from sae.config import SAEConfig
from sae.sparse import selected_encode, sparse_decode


class SAEOutput(NamedTuple):
    """What one forward pass gives back."""

    x_hat: torch.Tensor
    """Reconstruction from the top k latents, [B, d]."""
    values: torch.Tensor
    """Activations after ReLU, [B, w] (sorted, largest first): w = k for TopK; for
    BatchTopK w = ``cfg.code_width`` and the slots after a row's kept latents hold 0."""
    indices: torch.Tensor
    """Latent ids of ``values``, [B, w] (a zero-valued slot's id means nothing)."""
    nmse: torch.Tensor
    """Centred normalised MSE of ``x_hat`` over the batch (scalar)."""
    auxk_loss: torch.Tensor
    """NMSE of the dead-latent reconstruction of the residual (0 when none are dead)."""
    multi_topk_nmse: torch.Tensor
    """NMSE of the top-4k reconstruction (0 unless Multi-TopK is on)."""
    loss: torch.Tensor
    """nmse + aux_coef * auxk_loss (+ multi_topk_nmse / 8); for Matryoshka the mean of
    ``prefix_nmse`` replaces nmse."""
    prefix_nmse: torch.Tensor | None = None
    """[L] NMSE of each Matryoshka prefix's reconstruction, ``cfg.prefixes`` order (the
    last is ``nmse``); None for the other archs."""


def fvu(x_hat_BD: torch.Tensor, x_BD: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: the centred NMSE of SAE_RECIPE.md.

    sum((x_hat - x)^2) / sum((mean_over_batch(x) - x)^2). Centred on purpose: dividing
    by mean(x^2) gives other numbers for unit-norm embeddings. NaN when the batch has
    no variance (callers decide what that means).
    """
    x = x_BD.float()
    err = (x_hat_BD.float() - x).pow(2).sum()
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum()
    return err / total


def affine(x_BD, W_ND, b_N, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x @ W^T + b in float32 [B, n]; the matmul in ``compute_dtype`` when given."""
    if compute_dtype is not None and compute_dtype != x_BD.dtype:
        return (x_BD.to(compute_dtype) @ W_ND.to(compute_dtype).T).float() + b_N
    return torch.addmm(b_N, x_BD, W_ND.T)


class TopKSAE(nn.Module):
    """A TopK SAE with parameters named after the released checkpoints' roles.

    Parameters: ``W_enc`` [n, d], ``b_lat`` [n], ``W_dec`` [n, d], ``b_pre`` [d].
    Buffers: ``samples_since_fired`` [n], the dead-latent counter (in samples); with
    BatchTopK selection also ``threshold`` [] (-1 until a training batch sets it) and
    ``threshold_weight`` [] (1 - decay^steps, the EMA's bias correction).

    In ``train()`` mode (the default) BatchTopK selects over the batch; in ``eval()``
    mode by the threshold, as :meth:`encode` always does.
    """

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        n, d = cfg.n_latents, cfg.d_in
        W_dec = torch.randn(n, d, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.clone())
        self.b_lat = nn.Parameter(torch.zeros(n))
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.register_buffer("samples_since_fired", torch.zeros(n, dtype=torch.long))
        if cfg.selection == "batchtopk":
            # Negative = not estimated yet; a real threshold is an activation, >= 0.
            self.register_buffer("threshold", torch.tensor(-1.0))
            self.register_buffer("threshold_weight", torch.tensor(0.0))

    # ------------------------------------------------------------------ encode
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @property
    def k(self) -> int:
        return self.cfg.k

    def pre_activations(self, x_c_BD: torch.Tensor, compute_dtype: torch.dtype | None = None):
        """Dense z_pre [B, n] from centred inputs, without autograd (it only picks latents)."""
        with torch.no_grad():
            return affine(x_c_BD, self.W_enc, self.b_lat, compute_dtype)

    def encode(
        self, x_BD: torch.Tensor, k: int | None = None, compute_dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference codes: (values [B, w] after ReLU, indices [B, w]), largest first.

        TopK and Matryoshka-TopK: each sample's top k (w = k). BatchTopK: the latents
        with z_pre above the learned threshold, at most w = ``cfg.code_width`` per
        sample, unused slots 0. ``k`` given: each sample's top k, whatever the arch.
        """
        self._check_input(x_BD)
        z_pre = self.pre_activations(x_BD - self.b_pre, compute_dtype)
        if k is None:
            values, indices, keep = self.select(z_pre, batch=False)
        else:
            (values, indices), keep = z_pre.topk(k, dim=1, sorted=True), None
        values = selected_encode(x_BD, self.b_pre, self.W_enc, self.b_lat, indices, values)
        values = torch.relu(values)
        return (values, indices) if keep is None else (values.masked_fill(~keep, 0.0), indices)

    def select(self, z_pre_BN: torch.Tensor, batch: bool):
        """(pre-activations [B, w], indices [B, w], kept [B, w] bool or None) of the code.

        TopK: each row's top ``k_encode``, all kept (None). BatchTopK: each row's top w;
        ``batch``: kept are the batch's top k*B of relu(z_pre) (all of them lie in their
        rows' top w unless a row holds more than w); else those above the threshold.
        """
        cfg = self.cfg
        if cfg.selection == "topk":
            v, i = z_pre_BN.topk(cfg.k_encode, dim=1, sorted=True)
            return v, i, None
        v_BW, i_BW = z_pre_BN.topk(cfg.code_width, dim=1, sorted=True)
        if not batch:
            return v_BW, i_BW, v_BW > self.threshold
        flat = v_BW.clamp_min(0.0).flatten()
        kept = flat.topk(min(cfg.k * v_BW.shape[0], flat.numel()), sorted=False).indices
        keep = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, kept, True)
        return v_BW, i_BW, keep.view_as(v_BW)

    def decode(self, values_BK: torch.Tensor, indices_BK: torch.Tensor) -> torch.Tensor:
        """Reconstruction [B, d] from sparse codes; touches only the k selected rows."""
        return sparse_decode(values_BK, indices_BK, self.W_dec) + self.b_pre

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        x_BD: torch.Tensor,
        dead_mask_N: torch.Tensor | None = None,
        compute_dtype: torch.dtype | None = None,
        z_pre_BN: torch.Tensor | None = None,
    ) -> SAEOutput:
        """Reconstruct ``x`` and compute the training losses.

        ``dead_mask_N`` selects the latents the AuxK loss may use; None means the
        model's own counter (``samples_since_fired > cfg.dead_threshold``).
        ``z_pre_BN`` lets a pack trainer pass pre-activations it computed for many
        SAEs in one matmul; None computes them here.
        """
        self._check_input(x_BD)
        cfg = self.cfg
        if dead_mask_N is None:
            dead_mask_N = self.dead_mask()
        x_c = x_BD - self.b_pre
        z_pre = self.pre_activations(x_c, compute_dtype) if z_pre_BN is None else z_pre_BN
        top_v, top_i, keep = self.select(z_pre, batch=self.training)
        aux = self._aux_select(z_pre, dead_mask_N)
        if aux is not None:
            sel_i = torch.cat([top_i, aux[0]], dim=1)
            sel_v = torch.cat([top_v, aux[1]], dim=1)
        else:
            sel_i, sel_v = top_i, top_v
        sel_v = selected_encode(x_BD, self.b_pre, self.W_enc, self.b_lat, sel_i, sel_v)
        sel_v = torch.relu(sel_v)

        # Slots of the code: k (Multi-TopK's extra 3k only enter its own loss), or w.
        kt = top_i.shape[1]
        w = cfg.k if keep is None else kt
        values, indices = sel_v[:, :w], sel_i[:, :w]
        if keep is not None:
            values = values.masked_fill(~keep, 0.0)  # and no gradient to unkept slots
        x_hat = self.decode(values, indices)
        nmse = fvu(x_hat, x_BD)
        zero = nmse.new_zeros(())

        recon, prefix_nmse = nmse, None
        if cfg.arch == "matryoshka":
            prefix_nmse = torch.stack(
                [
                    fvu(self.decode(values.masked_fill(indices >= m, 0.0), indices), x_BD)
                    for m in cfg.prefixes[:-1]
                ]
                + [nmse]
            )
            recon = prefix_nmse.mean()

        multi = zero
        if cfg.multi_topk:
            k4 = cfg.k_encode
            multi = fvu(self.decode(sel_v[:, :k4], sel_i[:, :k4]), x_BD)

        auxk = zero
        if aux is not None:
            residual = x_BD - x_hat.detach()
            e_hat = sparse_decode(sel_v[:, kt:], sel_i[:, kt:], self.W_dec)
            auxk = torch.nan_to_num(fvu(e_hat, residual), nan=0.0)

        loss = recon + cfg.aux_coef * auxk + multi / 8.0
        return SAEOutput(x_hat, values, indices, nmse, auxk, multi, loss, prefix_nmse)

    def _aux_select(self, z_pre_BN: torch.Tensor, dead_mask_N: torch.Tensor):
        """(indices, pre-activations) of the top-k_aux dead latents, or None if none is dead.

        Only the dead columns are searched, which needs their count on the host: one
        sync per step. On an H200 (d=1536, n=12288, batch 4096, bf16) that beat masking
        the live columns and searching all of them, the sync-free way, in every case:
        k=32 with 10% dead 5.7 ms a step against 9.6, k=128 7.6 against 18.7, and with
        none dead 5.0 against 9.5 (nothing to search, so AuxK is skipped).
        """
        if self.cfg.aux_coef == 0:
            return None
        dead_ids = dead_mask_N.nonzero().squeeze(1)
        if dead_ids.numel() == 0:
            return None
        _, pos = z_pre_BN.index_select(1, dead_ids).topk(
            min(self.cfg.effective_k_aux, dead_ids.numel()), dim=1, sorted=False
        )
        idx = dead_ids[pos]
        return idx, z_pre_BN.gather(1, idx)

    # ------------------------------------------------------------ constraints
    def dead_mask(self) -> torch.Tensor:
        return self.samples_since_fired > self.cfg.dead_threshold

    @torch.no_grad()
    def update_dead_counter(
        self, indices_BK: torch.Tensor, values_BK: torch.Tensor | None = None
    ) -> None:
        """Reset the counter of every latent in some sample's code; add B to the rest.

        TopK: every slot of the top k counts, zeroed by the ReLU or not (the paper's
        code). BatchTopK: only slots with a nonzero value (``values_BK`` required), since
        a row's padding slots carry ids that were not selected.
        """
        idx = indices_BK.reshape(-1)
        if self.cfg.selection == "batchtopk":
            if values_BK is None:
                raise ValueError("a BatchTopK code pads with zeros: pass its values too")
            hits = torch.zeros(self.n_latents, device=idx.device)
            fired = hits.index_add_(0, idx, (values_BK > 0).reshape(-1).float()) > 0
        else:
            fired = torch.zeros_like(self.samples_since_fired, dtype=torch.bool)
            fired.index_fill_(0, idx, True)  # no host sync, unlike bincount
        self.samples_since_fired.add_(indices_BK.shape[0]).masked_fill_(fired, 0)

    @torch.no_grad()
    def update_threshold(self, values_BW: torch.Tensor) -> None:
        """BatchTopK: theta = the bias-corrected EMA (decay ``cfg.threshold_decay``) of each
        training batch's smallest kept activation; a no-op for TopK selection.

        Bias-corrected as Adam's moments are, so the first batch sets theta and no early
        batch outweighs the later ones: seeding a plain EMA with the first batch (as
        dictionary_learning does, which therefore starts it only at step 1000) left the
        untrained model's value with weight 0.99^t, and a 78-step run a threshold giving
        L0 2.5 at inference for k = 8. ``values_BW``: the training code's values
        (unkept slots 0). No host sync.
        """
        if self.cfg.selection != "batchtopk":
            return
        low = values_BW.masked_fill(values_BW <= 0, torch.inf).min().to(self.threshold.dtype)
        decay, w = self.cfg.threshold_decay, self.threshold_weight
        sum_ = self.threshold.clamp_min(0.0) * w  # the uncorrected EMA
        w_new = decay * w + (1.0 - decay)
        theta = (decay * sum_ + (1.0 - decay) * low) / w_new
        seen = torch.isfinite(low)  # a batch with nothing kept leaves both as they were
        self.threshold.copy_(torch.where(seen, theta, self.threshold))
        self.threshold_weight.copy_(torch.where(seen, w_new, w))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """g_j -= (w_j . g_j) w_j, so a step moves each unit-norm row along its sphere."""
        g = self.W_dec.grad
        if g is None:
            return
        w = self.W_dec
        g.addcmul_(torch.linalg.vecdot(g, w).unsqueeze(1), w, value=-1.0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # --------------------------------------------------------------- checks
    def _check_input(self, x_BD: torch.Tensor) -> None:
        if x_BD.ndim != 2 or x_BD.shape[1] != self.d_in:
            raise ValueError(
                f"input has shape {tuple(x_BD.shape)}, expected [batch, d_in={self.d_in}]"
            )

    # ------------------------------------------------------------ save/load
    def save(self, directory, **kwargs) -> None:
        from sae.checkpoint import save_sae

        save_sae(self, directory, **kwargs)

    @classmethod
    def load(cls, directory, device: str | torch.device = "cpu") -> TopKSAE:
        from sae.checkpoint import load_sae

        return load_sae(directory, device=device)

    @classmethod
    def from_released(cls, path, k: int | None = None) -> TopKSAE:
        from sae.checkpoint import load_released

        return load_released(path, k=k)


# ----------------------------------------------------------- initialisation
def geometric_median(x_ND: torch.Tensor, iters: int = 20, eps: float = 1e-8) -> torch.Tensor:
    """Weiszfeld iterations for argmin_m sum_i ||x_i - m||; [d].

    Starts from the coordinate-wise mean; each step is a reweighted mean with
    weights 1 / ||x_i - m||, clamped so a point on the median does not divide by 0.
    """
    x = x_ND.double()
    m = x.mean(dim=0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        m_new = (w[:, None] * x).sum(dim=0) / w.sum()
        if (m_new - m).norm() <= eps * (1.0 + m.norm()):
            m = m_new
            break
        m = m_new
    return m.to(x_ND.dtype)


def data_median(x_ND: torch.Tensor, iters: int) -> torch.Tensor:
    """The pre-bias ``b_pre`` from data: the geometric median for iters > 0, else the
    coordinate-wise median (the paper's code)."""
    if iters > 0:
        return geometric_median(x_ND, iters=iters)
    return x_ND.median(dim=0).values
