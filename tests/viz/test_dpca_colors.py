"""dPCA projection colours: the label classes are told apart from each other and from the nuisance
levels at a glance (issue #15: two label colours looked alike)."""

from __future__ import annotations

import numpy as np
import plotly.colors
import torch

from icl_circuits.methods.dpca.analysis import dpca_from_states
from icl_circuits.methods.dpca.states import LabelStates
from icl_circuits.viz import _style
from icl_circuits.viz import dpca as plots


def _fit():
    rng = np.random.default_rng(0)
    nuis, lab = np.meshgrid(np.arange(4), np.arange(2), indexing="ij")
    nuis, lab = np.repeat(nuis.ravel(), 12), np.repeat(lab.ravel(), 12)
    H = 3.0 * (2 * lab - 1)[:, None] * np.eye(8)[0] + 0.5 * nuis[:, None] * np.eye(8)[1] + rng.normal(size=(len(lab), 8))
    n, z = len(lab), torch.zeros(len(lab), dtype=torch.long)
    st = LabelStates(states=torch.tensor(H[None], dtype=torch.float32), nuisance=torch.tensor(nuis), label=torch.tensor(lab),
                     word=z, prompt=torch.arange(n), demo=z, position=z, layers=[0], position_kind="answer",
                     task="constructed", model="none", nuisance_name="length", word_names=[], n_demos=1, seed=0)
    return dpca_from_states(st, regularizer=1e-3, n_null=0, progress=False)


def _rgb(c: str) -> np.ndarray:
    return np.array(plotly.colors.hex_to_rgb(c), dtype=float)


def test_projection_colours_are_distinct_palette_colours():
    fig = plots.projections(_fit())
    colours = {tr.name: tr.marker.color for tr in fig.data if tr.showlegend}
    assert set(colours) == {"label=0", "label=1", "length=0", "length=1", "length=2", "length=3"}
    assert set(colours.values()) <= set(_style.PALETTE) and len(set(colours.values())) == len(colours)
    labels = [_rgb(colours[f"label={i}"]) for i in (0, 1)]
    others = [_rgb(c) for k, c in colours.items() if k.startswith("length")]
    # far apart in RGB (the old pair blue/pink next to red/magenta nuisance levels was the complaint):
    assert np.linalg.norm(labels[0] - labels[1]) > 200
    assert min(np.linalg.norm(a - b) for a in labels for b in others) > 100
