"""Batch schema, sources and pipelines."""
