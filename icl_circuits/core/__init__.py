"""What every method stands on: models, tasks, prompts and positions, intervention specs, the
runner that executes them, the metric registry and the Result base.

Data flows one way: Task -> PromptBatch -> intervention specs -> runner -> Result.
"""


def __getattr__(name: str):
    """Load a submodule on first attribute access (``ic.viz.saliency``, ``ic.methods.heads``...)."""
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
