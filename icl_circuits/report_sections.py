"""The sections of the HTML report, in order. Each computes with the public API and explains."""

from __future__ import annotations

from .evaluation import accuracy_by_demos
from .plots import accuracy as accuracy_plots
from .report import Context, Section, section
from .tasks import list_tasks


@section("accuracy")
def accuracy_section(ctx: Context) -> Section:
    cfg = ctx.cfg
    tasks = list_tasks() if not cfg.quick else [cfg.knowledge_task, cfg.category_task, "uppercase"]
    df = accuracy_by_demos(ctx.model, tasks, demos=[0, 1, 2, 4, 8], n_prompts=cfg.prompts(), seed=cfg.seed)
    wide = df.pivot(index="task", columns="n_demos", values="accuracy").loc[tasks].reset_index()
    wide.columns = [str(c) if c == "task" else f"k={c}" for c in wide.columns]
    return Section(
        "accuracy", "ICL accuracy vs number of demos",
        "Top-1 accuracy of the first answer token on fresh prompts, with Wilson 95% intervals. "
        "Zero-shot accuracy on categorization tasks should sit at chance: their label words are drawn "
        "per prompt, so only the demos can bind classes to words.",
        figures=[accuracy_plots.accuracy_by_demos(df, f"ICL accuracy of {cfg.model_name}")],
        table=wide,
    )


@section("saliency")
def saliency_section(ctx: Context) -> Section:
    from .plots import saliency as splots
    from .prompts import build_prompts
    from .saliency import saliency_flow

    cfg = ctx.cfg
    batch = build_prompts(ctx.model, cfg.knowledge_task, cfg.prompts(32), cfg.n_demos, seed=cfg.seed)
    res = saliency_flow(ctx.model, batch, loss="full_vocab", progress=False)
    df = res.to_dataframe()
    return Section(
        "saliency", "Saliency flow: label words as anchors (Wang et al. 2023)",
        f"Saliency I_l = |sum_h A_(l,h) * dL/dA_(l,h)| from one forward and one backward pass on "
        f"{len(batch)} prompts of {cfg.knowledge_task} ({cfg.n_demos} demos), loss = cross-entropy of the gold "
        "first answer token over the vocabulary. S_wp: text to label words; S_pq: label words to the final "
        "position; S_ww: all other pairs. On GPT2-XL the paper found S_wp dominating shallow layers and S_pq "
        "deep layers.",
        figures=[splots.flows(res), splots.heatmap(res, example=0)],
        table=df if len(df) < 60 else None,
    )
