"""The model card (README.md) of an exported cell, in the form model hubs show: YAML front
matter (``library_name``, ``tags``, ``base_model`` where the embedder is a hub model),
then what the SAE is, how to load it, its held-out metrics, data, embedder and training
settings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.embed.embedders import MINILM_NAME, embedder_name
from tasks.embed.rows import EVAL_EVERY

#: The hub model behind the bundled ``minilm`` (mean-pooled and normalised, as it is here).
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"

#: Held-out metrics shown, in order, with what each means.
_METRICS = {
    "nmse": "centred normalised MSE: sum((x_hat - x)^2) / sum((x - mean(x))^2)",
    "log_feature_density": "mean log10 share of papers a latent fires on (fired latents)",
    "act_mean": "mean of the nonzero activations",
    "dead_fraction": "share of latents dead at the end of training",
    "l0": "active latents per paper",
    "auxk_loss": "AuxK loss on the dead latents",
    "retrieval_recall_at_10": "share of a paper's 10 nearest neighbours that search with its "
    "reconstruction finds",
    "retrieval_ndcg_at_10": "nDCG@10 of that search",
    "sparse_recall_at_10": "the same, searching by the codes alone",
}


@dataclass(frozen=True)
class CardFacts:
    """What the card says about one cell."""

    fmt: str
    """``saelens`` or ``safetensors`` (our own checkpoint)."""
    domain: str
    cell: str
    sweep_id: str
    d_in: int
    n_latents: int
    k: int
    """The latents the encoder keeps per input (SAELens's ``k``)."""
    arch: str
    metrics: dict[str, float]
    """metrics.json's held-out metrics and retrieval.json's."""
    data_snapshot: str
    n_train: int | None
    n_eval: int | None
    embedder: str
    """The embedder's storage name (``minilm-l6-v2``)."""
    embedder_spec: str
    """As ``--embedder`` takes it (``minilm``, ``st:...``); empty when not recorded."""
    train: dict[str, Any] | None
    """cfg.json's training settings; None for a cell imported from elsewhere."""
    code_version: str


def hub_model(spec: str) -> str | None:
    """The model hub's name of the embedder ``spec``, when it is one."""
    if spec and embedder_name(spec) == MINILM_NAME:
        return MINILM_HUB
    kind, _, arg = spec.partition(":")
    if kind == "st" and arg.count("/") == 1 and not Path(arg).exists():
        return arg
    return None


def render_card(f: CardFacts) -> str:
    """README.md: front matter, then markdown."""
    return _front_matter(f) + "\n" + "\n".join(_body(f)) + "\n"


def _front_matter(f: CardFacts) -> str:
    tags = ["sparse-autoencoder", "topk-sae", "text-embeddings", "arxiv", f.domain, f.embedder]
    if f.fmt == "saelens":
        tags.insert(0, "saelens")
    lines = ["---", f"library_name: {'saelens' if f.fmt == 'saelens' else 'arxiv-sae'}"]
    lines += ["tags:", *(f"- {_quoted(t)}" for t in tags)]
    base = hub_model(f.embedder_spec)
    if base:
        lines.append(f"base_model: {_quoted(base)}")
    return "\n".join([*lines, "---", ""])


def _body(f: CardFacts) -> list[str]:
    lines = [
        f"# {f.cell}: a TopK SAE over {f.embedder} embeddings of arXiv {f.domain}",
        "",
        f"A sparse autoencoder with {f.n_latents:,} latents, {f.k} active per input, over "
        f'the {f.d_in}-d embeddings (unit norm) of `title + "\\n\\n" + abstract` of the '
        f"papers listed in arXiv {f.domain}, cross-lists included.",
        "",
        "## Load it",
        "",
        *_loading(f),
        "",
        _conventions(f),
        "",
        "## Held-out metrics",
        "",
        "| metric | value | meaning |",
        "|---|---:|---|",
    ]
    meanings = dict(_METRICS)
    if f.train is None:
        meanings["dead_fraction"] = "share of latents that fire on none of the domain's papers"
    lines += [
        f"| {name} | {f.metrics[name]:.4g} | {meaning} |"
        for name, meaning in meanings.items()
        if isinstance(f.metrics.get(name), int | float)
    ]
    split = "its papers"
    if f.n_train is not None and f.n_eval is not None:
        held_out = f"{f.n_eval:,} held-out papers (1 id in {EVAL_EVERY}, by hash)"
        split = f"{f.n_train:,} training and {held_out}"
    hub = hub_model(f.embedder_spec)
    lines += [
        "",
        "## Data and embedder",
        "",
        f"- data: arXiv {f.domain}, snapshot `{f.data_snapshot}`: {split}",
        f"- embedder: `{f.embedder_spec or f.embedder}` (`{f.embedder}`, {f.d_in}-d"
        + (f"; the hub's `{hub}`)" if hub else ")"),
        "",
        "## Training",
        "",
    ]
    if f.train is None:
        lines.append(
            "Imported from another tool's SAE, not trained here; the metrics above are on "
            "this domain's papers."
        )
    else:
        lines += ["| setting | value |", "|---|---|", f"| arch | {f.arch} |"]
        lines += [f"| {k} | {_plain(v)} |" for k, v in sorted(f.train.items())]
    lines += [
        "",
        "## Provenance",
        "",
        f"Cell `{f.cell}` of sweep `{f.sweep_id}`, by the arxiv-sae pipeline (a replication "
        f"of arXiv 2408.00657), code version `{f.code_version}`.",
    ]
    return lines


def _conventions(f: CardFacts) -> str:
    pre, dec = ("b_dec", "W_dec [d_sae, d_in]") if f.fmt == "saelens" else ("b_pre", "W_dec [n, d]")
    flag = " (`apply_b_dec_to_input: true`)" if f.fmt == "saelens" else ""
    return (
        f"Conventions: the pre-bias `{pre}` is subtracted from the input before the encoder "
        f"and added back after the decoder{flag}; each input keeps its k largest "
        f"pre-activations, then a ReLU applies to those k; the decoder's rows (`{dec}`) are "
        "the features' directions."
    )


def _loading(f: CardFacts) -> list[str]:
    if f.fmt == "saelens":
        return [
            "```python",
            "from sae_lens import SAE",
            "",
            'sae = SAE.load_from_disk("path/to/this/folder")',
            f"acts = sae.encode(x)  # x: [batch, {f.d_in}] embeddings -> [batch, {f.n_latents}]",
            "x_hat = sae.decode(acts)",
            "```",
        ]
    return [
        "```python",
        "from sae import TopKSAE  # arxiv-sae's library (torch only)",
        "",
        'sae = TopKSAE.load("path/to/this/folder")  # model.safetensors + cfg.json',
        f"values, indices = sae.encode(x)  # x: [batch, {f.d_in}] -> [batch, k] each",
        "x_hat = sae.decode(values, indices)",
        "```",
    ]


def _quoted(text: str) -> str:
    """A YAML scalar that stays a string (a JSON string is valid YAML)."""
    return json.dumps(text)


def _plain(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)
