"""Curation: ingest, score, grade, select and report on VLM training data (the `curate` CLI).

`curate.open_store(path)` is the Python API (curate.api); it is imported on first use, so that
`import curate` and `curate --help` stay instant.
"""

__all__ = ["StoreView", "open_store"]


def __getattr__(name: str):
    if name in __all__:
        from importlib import import_module

        return getattr(import_module("curate.api"), name)
    raise AttributeError(f"module 'curate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
