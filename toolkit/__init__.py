"""retrieval-race toolkit: shared helpers for loading competition data, embedding, searching and submitting."""
