"""Reading a trained SAE: its features' cards, offline labels with scores, families, lineage.

A cell's features live next to it in the store, ``sae/{sweep_id}/{cell}/features/``:

- ``codes.parquet``: the sparse codes of the snapshot's papers, one row per paper
  (``id``, ``latents`` list[int32], ``values`` list[float32]; only nonzero entries).
- ``features.json``: the cards, the families and a summary (schema in
  :mod:`tasks.features.schema`); the browser page embeds it.
- ``browser.html``: a self-contained page over ``features.json``.
"""
