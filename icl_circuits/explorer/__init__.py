"""The interactive ICL explorer: a Dash app whose views run the project's methods on a prompt you
build (``icl-circuits explore``, ``ic.explore(model)`` in Jupyter).

``Explorer`` (the model side, cached per prompt) and the input checks need no Dash; ``make_app``,
``serve`` and ``explore`` import Dash (the ``[explore]`` extra) when first used.
"""

from icl_circuits.explorer.inputs import ExplorerInputError, PromptSettings
from icl_circuits.explorer.session import Explorer, PromptView

__all__ = ["Explorer", "ExplorerInputError", "PromptSettings", "PromptView", "explore", "make_app", "serve"]


def __getattr__(name: str):
    if name in ("make_app", "serve", "explore"):
        from icl_circuits.explorer import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
