"""The analyses, one module per method. Each takes a model and PromptBatch(es) and returns a Result."""


def __getattr__(name: str):
    """Load a submodule on first attribute access (``ic.viz.saliency``, ``ic.methods.heads``...)."""
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
