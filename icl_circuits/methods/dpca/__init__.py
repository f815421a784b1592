"""dPCA of label-position states (Kobak et al. 2016, as used by 2406.16007).

``numpy_dpca``: the decomposition itself (numpy); ``analysis``: states from a model, fits per
layer, nulls and distances; ``ablation``: removing a fitted subspace from the residual stream.
"""


def __getattr__(name: str):
    """Load a submodule on first attribute access (``ic.viz.saliency``, ``ic.methods.heads``...)."""
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
