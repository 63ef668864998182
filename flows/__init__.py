"""Prefect flows and the ``sae`` command line: what runs, in which order."""
