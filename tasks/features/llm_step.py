"""LLM labels for the densest live features of an analysed cell (``--llm-labels N``).

Per feature, the evidence the paper's protocol asks for, drawn from the stored codes:
its 10 top-activating label-train abstracts, 10 label-train abstracts where it does not
fire, and 10 held-out abstracts (up to 5 where it fires, the rest where it does not; the
same label hold-out as the offline scores). Results go into ``features.json`` (``llm``
of each card, ``llm_*`` in the summary) and the page is rendered again. The labeler's
cache (a JSON-lines file under ``SAE_HOME/cache/llm_labels``) makes a rerun free.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from infra.store import Store
from tasks.embed.manifest import Namespace
from tasks.features.browser import render_browser
from tasks.features.codes_store import read_codes
from tasks.features.document import sig
from tasks.features.label_scores import score_phrases
from tasks.features.label_scores import summarize as summarize_embed
from tasks.features.llm_labels import ChatClient, LabelCache, LLMLabeler
from tasks.features.locate import require_label_api
from tasks.features.run import CODES_FILE, DOC_FILE, PAGE_FILE, CellJob, label_holdout, texts_of

log = logging.getLogger(__name__)

TOP, OTHERS, HELDOUT_FIRING, HELDOUT = 10, 10, 5, 10


def _embed_scores(store, job: CellJob, doc: dict, ids, codes, heldout, results) -> dict:
    """The LLM labels scored by their embedding as the term labels are (``embed_f1`` and
    ``embed_pearson`` of each ``llm``; ``llm_embed_*`` in the summary)."""
    phrases = {r.latent: r.label for r in results if r.label}
    ns = Namespace(store, job.embedder)
    x_ids, x_ND = ns.load(keys=store.read_parquet(job.snapshot_path))
    if x_ids != ids:
        raise RuntimeError(f"{job.cell}: the codes' ids differ from the snapshot's")
    scores, skipped = score_phrases(ns, phrases, x_ND, codes, heldout)
    for j, score in scores.items():
        llm = doc["features"][j]["llm"]
        llm["embed_f1"] = sig(score.f1) if score.f1 is not None else None
        llm["embed_pearson"] = sig(score.pearson) if score.pearson is not None else None
    skip = {"llm_embed_skipped": int(skipped is not None)}
    return summarize_embed(list(scores.values()), prefix="llm_embed") | skip


def llm_label_cell(job: CellJob, settings, n_features: int, seed: int = 0) -> dict:
    """Label the ``n_features`` densest live features; returns the ``llm_*`` summary."""
    require_label_api(settings)
    store = Store(job.store_root, job.storage_options)
    out = job.features_folder()
    doc = json.loads(store.read_bytes(f"{out}/{DOC_FILE}"))
    ids, codes = read_codes(store, f"{out}/{CODES_FILE}", doc["n_latents"])
    _, texts = texts_of(store, ids)
    heldout = label_holdout(ids)
    offsets, rows, vals = codes.by_latent()
    density = np.array([f["density"] or 0.0 for f in doc["features"]])
    chosen = [int(j) for j in np.argsort(-density, kind="stable")[:n_features] if density[j] > 0]
    rng = np.random.default_rng(seed)

    cache = LabelCache(settings.cache_root / "llm_labels" / f"{job.sweep_id}.jsonl")
    with ChatClient(settings.label_api_base, settings.label_model) as client:
        labeler = LLMLabeler(
            client,
            cache,
            cell=f"{job.sweep_id}/{job.cell}",
            price_in_per_mtok=settings.label_price_in_per_mtok,
            price_out_per_mtok=settings.label_price_out_per_mtok,
        )
        results = []
        for j in chosen:
            fire_rows = rows[offsets[j] : offsets[j + 1]]
            fire_vals = vals[offsets[j] : offsets[j + 1]]
            fires = np.zeros(len(ids), dtype=bool)
            fires[fire_rows] = True
            train_top = [int(r) for r in fire_rows if not heldout[r]][:TOP]
            quiet_train = np.nonzero(~fires & ~heldout)[0]
            others = rng.choice(quiet_train, min(OTHERS, len(quiet_train)), replace=False)
            held_fire = [(int(r), float(v)) for r, v in zip(fire_rows, fire_vals, strict=True)
                         if heldout[r]]  # fmt: skip
            picked = [held_fire[i] for i in rng.permutation(len(held_fire))[:HELDOUT_FIRING]]
            quiet_held = np.nonzero(~fires & heldout)[0]
            n_quiet = min(HELDOUT - len(picked), len(quiet_held))
            picked += [(int(r), 0.0) for r in rng.choice(quiet_held, n_quiet, replace=False)]
            if not train_top:
                continue
            result = labeler.label(
                j,
                [texts[r] for r in train_top],
                [texts[int(r)] for r in others],
                [(texts[r], a) for r, a in picked],
            )
            results.append(result)
            doc["features"][j]["llm"] = {
                "label": result.label,
                "f1": sig(result.f1) if result.f1 is not None else None,
                "pearson": sig(result.pearson) if result.pearson is not None else None,
                "error": result.error,
            }
        totals = labeler.totals()
    embedded = _embed_scores(store, job, doc, ids, codes, heldout, results)
    scored = [r.f1 for r in results if r.f1 is not None]
    summary = {
        "llm_model": settings.label_model,
        "llm_labels": sum(r.label is not None for r in results),
        "llm_errors": sum(r.error is not None for r in results),
        "llm_f1_mean": sig(float(np.mean(scored))) if scored else None,
        "llm_f1_ge_0_8": sig(float(np.mean([f >= 0.8 for f in scored]))) if scored else None,
        "llm_prompt_tokens": totals.prompt_tokens,
        "llm_completion_tokens": totals.completion_tokens,
        "llm_cached": totals.cached,
        "llm_cost": sig(totals.cost) if totals.cost is not None else None,
        **{k: sig(v) if isinstance(v, float) else v for k, v in embedded.items()},
    }
    doc["summary"].update(summary)
    store.write_bytes(f"{out}/{PAGE_FILE}", render_browser(doc).encode())
    store.write_bytes(f"{out}/{DOC_FILE}", json.dumps(doc, separators=(",", ":")).encode())
    log.info("%s: %d LLM labels (%s)", job.cell, summary["llm_labels"], summary)
    return doc["summary"]
