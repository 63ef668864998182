"""arXiv metadata in, validated corpus parts out: readers, harvesters, validation, storage."""
