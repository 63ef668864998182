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
         "f1": 0.71, "pearson": 0.55,     # the label's held-out scores; null: too few papers
         "top": [[paper_index, activation], ...],        # the 20 highest, highest first
         "middle": [[paper_index, activation], ...],     # a few from the middle of its range
         "neighbours": [[latent, cosine], ...],          # nearest decoder rows
         "cooccurs": [[latent, share], ...],  # P(other fires | this fires), highest first
         "family": 3 or null,             # the family it heads or belongs to (see families)
         "parent": 12 or null,            # its parent in the family tree
         "children": [40, 41]},           # its children in the family tree
        ...],
      "families": [{"id": 3, "parent": 12, "members": [12, 40, 41, ...], "depth": 2}, ...],
      "summary": {"live_features": 3050, "dead_features": 22, "label_f1_mean": 0.41,
                  "label_f1_ge_0_8": 0.06, "label_pearson_mean": 0.33, "families": 140,
                  "family_size_mean": 4.2, ...}
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
