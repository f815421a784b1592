"""Plotly figure builders, one per result kind; each takes a result and returns a go.Figure."""
