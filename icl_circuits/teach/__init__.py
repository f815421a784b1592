"""Exercise checks for the tutorial notebooks (02-07): each compares a learner's answer with the
package's own method and with the common mistakes computed the same way, prints what is right or
wrong ("Correct.", "Not done yet: ...", "Not quite: <diagnosis>") and returns a ``CheckResult``
(truthy only when correct). A check never raises on a wrong answer, so a notebook runs top to
bottom; it raises ``TypeError`` / ``ValueError`` naming the argument when an argument is not an
answer at all.

One module per lesson: ``positions`` (03, 07), ``task_vectors`` (02), ``interchange`` (03),
``saliency`` (04), ``heads`` (05), ``dpca`` (06); ``checks`` holds what they share.
"""

from icl_circuits.teach.checks import CheckResult
from icl_circuits.teach.dpca import check_marginal_variance
from icl_circuits.teach.heads import check_head_ablation_effect
from icl_circuits.teach.interchange import check_transfer_rate
from icl_circuits.teach.positions import check_position_set
from icl_circuits.teach.saliency import check_s_wp
from icl_circuits.teach.task_vectors import check_vanilla_task_vector

__all__ = ["CheckResult", "check_position_set", "check_vanilla_task_vector", "check_transfer_rate", "check_s_wp",
           "check_head_ablation_effect", "check_marginal_variance"]
