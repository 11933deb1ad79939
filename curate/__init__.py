"""Curation: ingest, score, grade, select and report on VLM training data (the `curate` CLI)."""
