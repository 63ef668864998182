"""Embedders and incremental, sharded embedding of the corpus."""
