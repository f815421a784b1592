"""What every check of ``icl_circuits.teach`` shares: the verdict it returns, the placeholder it
recognizes, and turning a learner's answer into numbers (or a clear error when it is no answer at all).

A check never raises on a wrong answer: a notebook must run top to bottom whatever the learner
wrote. It prints one message and returns a ``CheckResult`` (truthy only when correct). It raises
``TypeError`` / ``ValueError`` naming the argument only when an argument is not an answer at all
(a model where a tensor belongs, a layer the result does not have).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from icl_circuits.core.types import HookedModel

__all__ = ["CheckResult", "Mistake", "Status", "is_placeholder", "numeric", "scalar", "same", "verdict",
           "first_mistake", "ratio_note", "check_model"]

Status = Literal["correct", "not_done", "wrong"]
PREFIX = {"correct": "Correct. ", "not_done": "Not done yet: ", "wrong": "Not quite: "}


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check.

    check: the check's name; status: "correct", "not_done" (the placeholder ``...`` is still there)
    or "wrong"; message: what the learner reads, printed when the check runs. ``bool(result)`` is
    True only when correct.
    """

    check: str
    status: Status
    message: str

    def __bool__(self) -> bool:
        return self.status == "correct"

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    def __str__(self) -> str:
        return self.message

    def _ipython_display_(self) -> None:
        """Show nothing in Jupyter: the check printed ``message`` when it ran (showing the result as
        a cell's last value would repeat it)."""


@dataclass(frozen=True)
class Mistake:
    """A common mistake, computed the same way as the right answer: ``value`` is what the mistake
    gives on the learner's data, ``message`` the diagnosis printed when the answer equals it."""

    value: Any
    message: str


def verdict(check: str, status: Status, message: str, *, quiet: bool = False) -> CheckResult:
    """A ``CheckResult`` whose message starts with "Correct.", "Not done yet:" or "Not quite:"; printed
    unless ``quiet``."""
    result = CheckResult(check, status, PREFIX[status] + message)
    if not quiet:
        print(result.message)
    return result


def is_placeholder(answer: Any) -> bool:
    """Whether ``answer`` is still the exercise's placeholder (``...``, or None)."""
    return answer is Ellipsis or answer is None


def numeric(answer: Any, arg: str, what: str) -> Tensor:
    """``answer`` as a float64 tensor: a torch tensor, a numpy array or number, a Python number (or a
    list of numbers). Anything else is not an answer: ``TypeError`` naming ``arg`` and ``what`` it
    should be."""
    if isinstance(answer, Tensor):
        t = answer.detach().cpu()
    elif isinstance(answer, (bool, int, float, np.integer, np.floating, np.bool_, np.ndarray)):
        t = torch.as_tensor(np.asarray(answer))
    elif isinstance(answer, (list, tuple)) and all(isinstance(v, (int, float, np.number)) for v in answer):
        t = torch.as_tensor(list(answer))
    else:
        raise TypeError(f"{arg} must be {what} (a tensor or a number), got {type(answer).__name__}")
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.bool, torch.int8, torch.int16,
                                                                     torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{arg} must be {what}, got a tensor of dtype {t.dtype}")
    return t.to(torch.float64)


def scalar(answer: Tensor) -> float | None:
    """The number in a one-element tensor, or None when it holds several."""
    return float(answer.reshape(-1)[0]) if answer.numel() == 1 else None


def same(answer: Tensor, value: Any, *, rtol: float = 1e-4, atol: float = 0.0) -> bool:
    """Whether ``answer`` equals ``value`` in shape (a one-element answer matches a scalar) and
    within ``rtol`` / ``atol`` (float32 computations done another way differ in the last bits)."""
    v = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    a = answer
    if a.numel() == 1 and v.numel() == 1:
        a, v = a.reshape(()), v.reshape(())
    if a.shape != v.shape or not torch.isfinite(a).all():
        return False
    return bool(torch.allclose(a, v, rtol=rtol, atol=atol))


def first_mistake(answer: Tensor, mistakes: Sequence[Mistake], match: Callable[[Tensor, Any], bool]) -> str | None:
    """The message of the first mistake whose value ``match``es the answer, or None."""
    for m in mistakes:
        if m.value is not None and match(answer, m.value):
            return m.message
    return None


def ratio_note(got: float, want: float) -> str:
    """How far a number is from the right one, without giving it away."""
    if not np.isfinite(got):
        return f"your value is {got}"
    if want == 0:
        return f"your value {got:.4g} should be 0"
    if got == 0:
        return "your value is 0"
    r = got / want
    if r < 0:
        return f"your value {got:.4g} has the wrong sign"
    return f"your value {got:.4g} is {r:.3g} times the right one"


def check_model(model: object, arg: str = "model") -> HookedModel:
    """``model`` if it is a loaded model (``cfg`` with ``n_layers``, and a ``tokenizer``), else
    ``TypeError`` naming ``arg``."""
    if not isinstance(model, HookedModel) or not hasattr(getattr(model, "cfg", None), "n_layers"):
        raise TypeError(f"{arg} must be a loaded model (ic.load_model), got {type(model).__name__}")
    return model
