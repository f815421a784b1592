"""Plotly figure builders, one module per result kind; each takes a result and returns a go.Figure.

``accuracy`` (accuracy vs demos), ``sweeps`` (layer curves, patching grids, head CIE),
``interchange`` (transfer / necessity / probes), ``saliency`` (flows, heatmaps), ``anchors`` (isolation), ``reweighting``,
``propagation`` (LTV comparisons, rotation vs scaling, task alignment), ``logit_lens``,
``heads`` (head scans), ``ov_circuits`` (OV DLA per head, reconstruction), ``key_heads`` (key vs random),
``dpca`` (explained variance, projections, distances).
"""


def __getattr__(name: str):
    """Load a submodule on first attribute access (``ic.viz.saliency``, ``ic.methods.heads``...)."""
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
