"""Plotly figure builders, one module per result kind; each takes a result and returns a go.Figure.

``accuracy`` (accuracy vs demos), ``sweeps`` (layer curves, patching grids, head CIE),
``interchange`` (transfer / necessity / probes), ``saliency`` (flows, heatmaps, isolation),
``propagation`` (LTV comparisons, rotation vs scaling, logit lens), ``circuits`` (heads),
``dpca`` (explained variance, projections, distances).
"""
