"""One cell's features, end to end, as one Ray task: encode the snapshot's papers once
(``codes.parquet``), then cards, offline labels with held-out scores, families, and the
browser page, all written next to the cell in the store.

Idempotent: a cell whose ``features.json`` exists is read back, not recomputed; codes
written by an attempt that died later are reused. Every file is written atomically by
the store, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.store import Store
from sae.codes import encode_matrix
from tasks.corpus.domains import get_domain
from tasks.corpus.storage import papers_in_order
from tasks.embed.manifest import Namespace
from tasks.embed.mapped import mapped_rows, snapshot_bytes
from tasks.embed.snapshot import snapshot_at
from tasks.features import families as fam_mod
from tasks.features import labels as label_mod
from tasks.features import probing
from tasks.features.browser import render_browser
from tasks.features.cards import decoder_neighbours, latent_stats
from tasks.features.categories import categories_of, over_represented
from tasks.features.codes_store import read_codes, write_codes
from tasks.features.document import add_categories, build_document
from tasks.features.label_scores import score_cell
from tasks.features.schema import COOCCURS, DOC_FILE
from tasks.sweep.load import load_cell_model

log = logging.getLogger(__name__)

CODES_FILE = "codes.parquet"
PAGE_FILE = "browser.html"
#: One paper in five is held out from label fitting (by a hash of its id, salted apart from
#: the sweep's own 1-in-20 split) to score the labels.
LABEL_HOLDOUT_EVERY = 5


@dataclass(frozen=True)
class CellJob:
    """What the Ray task needs: plain values only (it may run on another machine)."""

    store_root: str
    storage_options: dict
    domain: str
    embedder: str
    snapshot_path: str
    sweep_id: str
    cell: str
    folder: str
    model: str  # the registered model version, shown on the page
    clean: fam_mod.CleanRule  # which features may join families
    #: What the cell may hold of the vectors (``SAE_VECTOR_BUDGET``); past it they are
    #: read from the snapshot's memory-mapped rows, as a pack reads them. None: in memory.
    vector_budget_bytes: int | None = None

    def features_folder(self) -> str:
        return f"{self.folder}/features"


def label_holdout(ids: list[str]) -> np.ndarray:
    """[N] bool: the papers held out from label fitting (stable as the corpus grows)."""
    return np.array(
        [int(hashlib.sha256(f"labels:{i}".encode()).hexdigest()[:8], 16) % LABEL_HOLDOUT_EVERY
         == 0 for i in ids],
        dtype=bool,
    )  # fmt: skip


def analyse_cell(job: CellJob, scratch: Path, device: str = "cpu") -> dict:
    """The cell's summary (what MLflow gets); writes codes, features.json and the page."""
    store = Store(job.store_root, job.storage_options)
    out = job.features_folder()
    try:
        doc = store.read_json(f"{out}/{DOC_FILE}")
        return {"summary": doc["summary"], "reused": True}
    except FileNotFoundError:
        pass
    t0 = time.perf_counter()
    model = load_cell_model(store, job.folder, device, scratch)
    codes_rel = f"{out}/{CODES_FILE}"
    ids, x_ND = cell_vectors(store, job, scratch)
    if store.exists(codes_rel):
        code_ids, codes = read_codes(store, codes_rel, model.n_latents)
        if code_ids != ids:
            raise RuntimeError(f"{codes_rel}: its ids differ from the snapshot's")
    else:
        codes = encode_matrix(model, x_ND, device=device)
        write_codes(store, codes_rel, ids, codes)
    t_codes = time.perf_counter()

    titles, texts = texts_of(store, ids)
    stats = latent_stats(codes)
    terms = label_mod.TermMatrix.build(texts)
    heldout = label_holdout(ids)
    labels = label_mod.label_features(
        terms, codes.values_NW, codes.indices_NW, codes.n_latents, heldout
    )
    scores = score_cell(Namespace(store, job.embedder), labels, x_ND, codes, heldout)
    counts = fam_mod.cooccurrence(codes.values_NW, codes.indices_NW, codes.n_latents)
    live = stats.counts_N > 0
    clean = fam_mod.clean_features(scores.f1_N, scores.pearson_N, stats.density, job.clean)
    families = fam_mod.build_families(counts, eligible=live & clean)
    cooccurs = fam_mod.top_cooccurring_all(counts, COOCCURS)
    neighbours = decoder_neighbours(model.W_dec.detach().cpu())
    cats = categories_of(store, ids)
    probes = probing.probe_categories(ids, cats, get_domain(job.domain), codes, x_ND, device)
    summary = {
        "live_features": int(live.sum()),
        "dead_features": int((~live).sum()),
        **label_mod.summarize(labels),
        **scores.summary(),
        **fam_mod.summarize(families, int(live.sum()), clean),
        **probing.summarize(probes),
        "codes_seconds": round(t_codes - t0, 2),
        "analysis_seconds": round(time.perf_counter() - t_codes, 2),
    }
    meta = {
        "cell": job.cell,
        "domain": job.domain,
        "sweep_id": job.sweep_id,
        "k": model.k,
        "n_latents": model.n_latents,
        "model": job.model,
    }
    doc = build_document(
        meta, ids, titles, stats, labels, neighbours, cooccurs, families, summary, scores, clean
    )
    add_categories(doc, over_represented(codes, cats), [p.as_json() for p in probes])
    # The page first: features.json marks the cell done.
    store.write_bytes(f"{out}/{PAGE_FILE}", render_browser(doc).encode())
    payload = json.dumps(doc, separators=(",", ":"))
    store.write_bytes(f"{out}/{DOC_FILE}", payload.encode())
    log.info("%s: features in %.1f s", job.cell, time.perf_counter() - t0)
    # As a rerun reads it back (JSON keys are strings), so both runs report the same.
    return {"summary": json.loads(payload)["summary"], "reused": False}


def cell_vectors(store: Store, job: CellJob, scratch: Path) -> tuple[list[str], np.ndarray]:
    """The snapshot's ids, sorted, and their vectors [N, d] in that order: the codes come
    from them, the probes and label scores compare against them. Past the job's budget a
    read-only memmap of the rows a pack maps (the same file, when one trained here)."""
    keys = store.read_parquet(job.snapshot_path)
    snapshot = snapshot_at(store, job.snapshot_path, job.domain, job.embedder)
    budget = job.vector_budget_bytes
    if budget is None or snapshot_bytes(store, snapshot) <= budget:
        return Namespace(store, job.embedder).load(keys=keys)
    return sorted(keys["id"].to_list()), mapped_rows(store, snapshot, scratch / "snapshots")


def texts_of(store: Store, ids: list[str]) -> tuple[list[str], list[str]]:
    """Titles and "title\\n\\nabstract" of ``ids``, in their order ("" for a paper gone
    from the corpus since: its code stays, its label evidence is empty)."""
    table = papers_in_order(store, ids, ["title", "abstract"])
    titles = table["title"].fill_null("").to_list()
    abstracts = table["abstract"].fill_null("").to_list()
    return titles, [f"{t}\n\n{a}" for t, a in zip(titles, abstracts, strict=True)]
