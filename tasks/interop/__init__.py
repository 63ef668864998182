"""Sharing SAEs with other tools: our cells exported in SAELens's layout (or our own, with
a model card), and SAELens TopK SAEs imported as a sweep of a domain, to search and
analyse like ours. The format mapping is :mod:`tasks.interop.saelens`; the model card
:mod:`tasks.interop.card`; the commands' work :mod:`tasks.interop.export` and
:mod:`tasks.interop.import_sae`, the latter with an imported cell's files
(:mod:`tasks.interop.imported_cell`) and its MLflow record (:mod:`tasks.interop.record`).
None is imported here: the commands' modules load MLflow."""


class InteropInputError(ValueError):
    """Bad input to an export or an import: the message names the problem and the fix."""


__all__ = ["InteropInputError"]
