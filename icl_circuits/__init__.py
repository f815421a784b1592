"""icl-circuits: where and how a language model stores the task it infers from demonstrations.

Data flows one way: Task -> PromptBatch -> analysis -> Result -> figure / table / report.
Analyses live in their modules (``icl_circuits.methods.saliency``, ``.task_vectors``, ``.interchange``,
``.learned``, ``.ov_circuits``, ``.key_heads``, ``.heads``, ``.propagation``, ``.logit_lens``,
``.dpca_analysis``, ...); the names below are the ones a notebook needs first.
"""

from icl_circuits.core.evaluation import answer_logprob, greedy_answers, icl_accuracy, score
from icl_circuits.methods.accuracy import AccuracyResult, accuracy_by_demos, demo_sweep
from icl_circuits.core.runner import final_logits
from icl_circuits.core.metrics import get_metric, list_metrics
from icl_circuits.core.models import load_model, model_info
from icl_circuits.core.prompts import PromptBatch, Template, TokenizationBoundaryError, build_prompts, default_template
from icl_circuits.core.task_filters import representable_tasks, single_token_task
from icl_circuits.core.tasks import get_task, list_tasks, load_task, register_task, task_from_pairs
from icl_circuits.methods.vectors import TaskVector, evaluate_vector
from icl_circuits.methods.sweeps import SweepResult

__version__ = "0.1.0"

_SUBPACKAGES = ("core", "methods", "viz", "grid", "report", "teach", "explorer", "cli", "toy")


def explore(model="toy-icl", **options):
    """The interactive explorer inline in Jupyter (``icl_circuits.explorer.app.explore``): build a
    prompt, see its roles, attention and saliency, patch positions and ablate heads live.
    ``model``: a name ``load_model`` accepts or a loaded model; ``options``: ``port``, ``host``,
    ``mode`` ("inline", "tab", "external"), ``height``. Needs Dash (``pip install 'icl-circuits[explore]'``)."""
    from icl_circuits.explorer.app import explore as run

    return run(model, **options)


def __getattr__(name: str):
    """Load a subpackage (``ic.viz``, ``ic.methods``...) on first attribute access."""
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "PromptBatch", "Template", "TokenizationBoundaryError", "build_prompts", "default_template", "single_token_task", "representable_tasks",
    "get_task", "list_tasks", "register_task", "task_from_pairs", "load_task", "load_model", "model_info", "icl_accuracy", "accuracy_by_demos", "demo_sweep", "AccuracyResult", "final_logits",
    "score", "greedy_answers", "answer_logprob", "list_metrics", "get_metric",
    "TaskVector", "SweepResult", "evaluate_vector", "explore",
]
