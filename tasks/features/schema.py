"""The shape of ``features.json``: what the cards, the browser page and ``sae feature`` read.

Papers are listed once (``papers``) and referred to by their index in that list, so a
page over 12,288 features with 25 papers each stays a few MB. Floats are rounded to 4
significant digits when written.

.. code-block:: text

    {
      "version": 1,
      "cell": "csLG_64_3072_1024", "domain": "cs.LG", "sweep_id": "...",
      "k": 64, "n_latents": 3072, "n_papers": 19670, "model": "sae-cs.LG-k64-n3072/1",
      "papers": [{"id": "2401.00001", "title": "..."}, ...],
      "features": [                       # one per latent, in latent order
        {"id": 0,
         "density": 0.0123,               # share of papers whose code holds the latent
         "mean_act": 0.081,               # mean nonzero activation
         "label": ["diffusion", "denoising", "score"],   # offline label terms, best first
         "f1": 0.71, "pearson": 0.55,     # the label score (held-out F1, Pearson r) by the
                                          # scorer summary.label_score names; null: too few
         "term_f1": 0.4, "term_pearson": 0.3,    # scored by how many label terms a paper has
         "embed_f1": 0.71, "embed_pearson": 0.55,  # by the label's embedding vs the paper's
         "clean": true,                   # its label score and density let it join families
         "top": [[paper_index, activation], ...],        # the 20 highest, highest first
         "middle": [[paper_index, activation], ...],     # a few from the middle of its range
         "neighbours": [[latent, cosine], ...],          # nearest decoder rows
         "cooccurs": [[latent, share], ...],  # P(other fires | this fires), highest first
         "family": 3 or null,             # the family it heads or belongs to (see families)
         "parent": 12 or null,            # its parent in the family tree
         "children": [40, 41],            # its children in the family tree
         "categories": [["cs.CV", 4.2, 31], ...]},  # arXiv categories by lift
                                          # P(cat | fires) / P(cat), with the papers in both
        ...],
      "families": [{"id": 3, "parent": 12, "members": [12, 40, 41, ...], "depth": 2}, ...],
      "probes": [{"category": "cs.CV", "papers": 5342, "heldout": 1071,   # held-out F1s
                  "single": {"latent": 2938, "f1": 0.61}, "latents": [2938, ...],
                  "sparse_f1": {"1": 0.61, "4": 0.7, "16": 0.78},
                  "dense_f1": {"1": 0.2, "4": 0.4, "16": 0.6}, "full_f1": 0.83}, ...],
      "summary": {"live_features": 3050, "dead_features": 22, "label_f1_mean": 0.41,
                  "label_f1_ge_0_8": 0.06, "label_pearson_mean": 0.33,  # term scores
                  "label_embed_f1_mean": 0.6, "label_embed_pearson_mean": 0.5,
                  "label_score": "embed",   # or "term" (label_embed_skipped: 1, and why)
                  "clean_share": 0.3, "families": 140, "family_size_mean": 4.2, ...}
    }
"""

from __future__ import annotations

#: The file this describes, in a cell's ``features/`` folder.
DOC_FILE = "features.json"
VERSION = 1
TOP_PAPERS = 20
MIDDLE_PAPERS = 5
NEIGHBOURS = 8
COOCCURS = 8
LABEL_TERMS = 5
