"""The library's error for data it cannot train on, in a module without torch: a caller
that only needs to name it (to exit 2 on bad input) must not wait seconds for torch."""


class DataError(ValueError):
    """The embedding matrix cannot be trained on."""
