"""Exercise: the fraction of condition-mean variance in one dPCA marginalization (notebook 06).

``check_marginal_variance`` compares the learner's fraction with the package's split
(``methods.dpca.numpy_dpca.marginalize``, the one ``demixed_pca`` reports as
``total_marginal_variance``) and with the common mistakes computed from the same condition tensor:
no centring, the marginal means counted once instead of broadcast, the other factor's axis, the
interaction added, norms instead of squared norms, a per-feature average, a percentage.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from torch import Tensor

from icl_circuits.methods.dpca.conditions import ConditionData
from icl_circuits.methods.dpca.numpy_dpca import marginalize
from icl_circuits.teach.checks import (
    CheckResult, Mistake, first_mistake, is_placeholder, numeric, ratio_note, same, scalar, verdict,
)

__all__ = ["check_marginal_variance", "MARGINALIZATIONS"]

#: Axis 1 of the condition tensor is the nuisance factor (string length, parity...), axis 2 the label.
MARGINALIZATIONS = ("nuisance", "label", "interaction")
RTOL = 1e-6  # float64 sums in another order


def _per_feature(part: np.ndarray, Xc: np.ndarray) -> float:
    """The mistaken fraction: each feature's own fraction, averaged over features."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean((part**2).sum((1, 2)) / (Xc**2).sum((1, 2))))


def check_marginal_variance(
    answer: float | Tensor, X: np.ndarray | Tensor | ConditionData,
    marginalization: Literal["nuisance", "label", "interaction"] = "label",
) -> CheckResult:
    """Check the fraction of variance in one marginalization of a condition tensor
    X [d_model, n_nuisance, n_label] (the mean state of each (nuisance, label) condition):
    with Xc = X - mean over all conditions, X_label[:, i, j] = mean_i' Xc[:, i', j] (broadcast over i),
    X_nuisance likewise over the label axis, X_interaction = Xc - X_nuisance - X_label,
    ``fraction = ||X_phi||^2 / ||Xc||^2`` (squared Frobenius norms; the three fractions sum to 1).

    The reference is ``marginalize`` (``methods.dpca.numpy_dpca``), as ``dpca_by_layer`` reports it in
    ``variance_table()``. Prints the verdict and returns it; raises only when ``X`` is not a 3-axis
    array, ``marginalization`` is unknown or ``answer`` is not a number.
    """
    name = "check_marginal_variance"
    if marginalization not in MARGINALIZATIONS:
        raise ValueError(f"marginalization must be one of {MARGINALIZATIONS}, got {marginalization!r}")
    if isinstance(X, ConditionData):
        X = X.X
    if isinstance(X, Tensor):
        X = X.detach().cpu().numpy()
    if not isinstance(X, np.ndarray) or X.ndim != 3 or min(X.shape) < 1:
        raise TypeError(f"X must be a condition tensor [d_model, n_nuisance, n_label] (states.conditions(layer).X), "
                        f"got {type(X).__name__}{' of shape ' + str(X.shape) if isinstance(X, np.ndarray) else ''}")
    if is_placeholder(answer):
        return verdict(name, "not_done", f"replace ... with the fraction of variance in the {marginalization} "
                                         "marginalization: one number in [0, 1].")
    a = numeric(answer, "answer", "a fraction of variance (one number in [0, 1])")
    X = X.astype(np.float64)
    parts = dict(zip(MARGINALIZATIONS, marginalize(X, ("n", "l")).values()))
    grand = X.mean(axis=(1, 2), keepdims=True)
    Xc = X - grand
    total = float((Xc**2).sum())
    frac = {m: float((p**2).sum()) / total for m, p in parts.items()}
    want = frac[marginalization]
    match = lambda x, v: same(x, v, rtol=RTOL, atol=1e-12)  # noqa: E731
    if match(a, want):
        shown = ", ".join(f"{m} {v:.3f}" for m, v in frac.items())
        return verdict(name, "correct", f"{marginalization}: {want:.3f} of the condition-mean variance ({shown}).")
    own_axis = {"nuisance": 2, "label": 1}  # the axis a marginal mean averages over
    part = parts[marginalization]
    mistakes = [
        Mistake(float((part**2).sum() / (X**2).sum()),
                "you divided by ||X||^2 without centring: subtract the grand mean (the mean over all conditions) "
                "first; the residual stream's large common mean is not variance between conditions"),
    ]
    if marginalization in own_axis:
        ax = own_axis[marginalization]
        once = X.mean(axis=ax, keepdims=True) - grand
        count = X.shape[ax]
        other = "label" if marginalization == "nuisance" else "nuisance"
        mistakes += [
            Mistake(float((once**2).sum()) / total,
                    f"you counted each {marginalization} mean once; X_{marginalization} has X's full shape (each mean "
                    f"repeated for each of the {count} levels of the other factor): broadcast it, or multiply by {count}"),
            Mistake(frac[other], f"that is the {other} marginalization: you averaged over the wrong axis (axis 1 is the "
                                 f"nuisance, axis 2 the label; the {marginalization} part averages over axis {ax})"),
            Mistake(frac[marginalization] + frac["interaction"],
                    f"you included the interaction: X_{marginalization} is the mean over the other factor minus the grand "
                    "mean; what it leaves is the interaction"),
            Mistake(float((np.broadcast_to(X.mean(axis=ax, keepdims=True), X.shape) ** 2).sum()) / total,
                    f"X_{marginalization} must subtract the grand mean from the marginal means"),
        ]
    else:
        mistakes.append(Mistake(frac["nuisance"] + frac["label"],
                                "that is nuisance + label; the interaction is what they leave: Xc - X_nuisance - X_label"))
    mistakes += [
        Mistake(np.sqrt(want), "you took a ratio of norms; the fraction is a ratio of squared norms"),
        Mistake(_per_feature(part, Xc),
                "you averaged a fraction per feature; the fraction is of the variance summed over all features"),
        Mistake(100 * want, "that is a percentage; the fraction is in [0, 1]"),
    ]
    found = first_mistake(a, mistakes, match)
    if found is None:
        found = (f"your answer has {a.numel()} numbers; the fraction is one" if a.numel() != 1
                 else ratio_note(scalar(a), want))
    return verdict(name, "wrong", found + ".")
