"""Why linear propagation fits fail on SmolLM2: nonlinearity at the LTV's size, or a near-square fit?

    OMP_NUM_THREADS=1 python scripts/real_propagation_fit.py [--seed 0]

docs/results/real/circuits.md fits delta_h_L ~ W x from 720 random vectors (960 drawn, 25% held out) of
the learned task vector's norm for d = 576 and finds held-out R^2 from -14 to 0.30. Two explanations
predict different things: if the map is nonlinear at that size, smaller vectors fit and more fit vectors
or a ridge penalty do not rescue the large ones; if the 720 x 576 least-squares problem is merely
ill-conditioned, more vectors and a ridge penalty rescue it. This script measures held-out R^2 for both
norms (the LTV's, and a tenth of it), two fit sizes (720, 1200) and a ridge grid, at two injection layers,
on the same 4 zero-shot present-past prompts (seed 2000) as the circuits page; and the ridge that
``fit_linear_propagation``'s default (``ridge="cv"``, since issue 24) chooses by 5-fold cross-validation
on the fit vectors (``propagation.cv_ridge``). Writes docs/results/real/propagation_fit.md.
"""

from __future__ import annotations

import time

import torch

import real_common as rc

LAYERS = (6, 18)
SCALES = (1.0, 0.1)
N_FIT = (720, 1200)
N_TEST = 400
#: ridge = lam * mean squared entry of X * n_fit (lam = 0: plain least squares)
LAMS = (0.0, 1e-2, 1e-1, 1.0, 10.0)
LTV = rc.ROOT / "tests" / "methods" / "data" / "circuits_ltv"


def main() -> None:
    args = rc.parser(__doc__).parse_args()
    started = time.perf_counter()
    model = rc.setup(args.threads)
    from icl_circuits import build_prompts
    from icl_circuits.core.runner import read_resid
    from icl_circuits.methods.propagation import DEFAULT_RIDGE_GRID, cv_ridge, final_deltas, fit_linear_map, r2
    from icl_circuits.methods.vectors import TaskVector

    tv = TaskVector.load(LTV)
    norm0 = float(tv.at(tv.layers[0]).norm())
    fit = build_prompts(model, "present-past", 4, 0, seed=2000 + args.seed, variant="zero_shot", prepend_bos=True)
    d = model.cfg.d_model
    rows, best, cv, moved = [], {}, {}, []
    for layer in LAYERS:
        resid = read_resid(model, fit, None, [layer])[0]
        for scale in SCALES:
            g = torch.Generator().manual_seed(args.seed)
            n = N_TEST + max(N_FIT)
            dirs = torch.randn(n, d, generator=g)
            X = dirs / dirs.norm(dim=-1, keepdim=True) * norm0 * scale * (0.5 + torch.rand(n, 1, generator=g))
            Y = final_deltas(model, fit, layer, X, resid=resid).mean(1)
            for n_fit in N_FIT:
                Xf, Yf = X[N_TEST:N_TEST + n_fit], Y[N_TEST:N_TEST + n_fit]
                msq = float((Xf.double() ** 2).mean())
                cells = []
                for lam in LAMS:
                    W = fit_linear_map(Xf, Yf, ridge=lam * msq * n_fit)
                    cells.append(r2(Y[:N_TEST], X[:N_TEST].double() @ W.T))
                best[(layer, scale, n_fit)] = max(cells)
                choice = cv_ridge(Xf, Yf, seed=args.seed)  # what fit_linear_propagation(ridge="cv") does
                cv_r2 = r2(Y[:N_TEST], X[:N_TEST].double() @ fit_linear_map(Xf, Yf, ridge=choice.ridge).T)
                cv[(layer, scale, n_fit)] = (cv_r2, choice.ridge / (msq * n_fit))
                rows.append([layer, f"{norm0 * scale:.1f}", n_fit] + [f"{c:.2f}" for c in cells]
                            + [f"{cv_r2:.2f} (lam {choice.ridge / (msq * n_fit):.2g})"])
                moved.append([layer, f"{norm0 * scale:.1f}", n_fit, f"{cells[0]:.2f}", f"{cv_r2:.2f}"])
        print(f"layer {layer} done {time.perf_counter() - started:.0f}s", flush=True)

    big, small = SCALES
    lines = [
        "# Linear propagation on SmolLM2: nonlinearity or an ill-posed fit?", "",
        "[circuits.md](circuits.md) fits the map from a vector added at block l to its effect on the final residual "
        f"(delta_h_L ~ W x) from 720 random vectors of the learned task vector's norm ({norm0:.1f}) for d = {d}, and "
        "finds held-out R² from -14 to 0.30. Here the same fit on the same 4 zero-shot present-past prompts "
        f"(seed {2000 + args.seed}), held-out R² over {N_TEST} held-out random vectors (prompt-averaged effect), "
        "for the LTV's norm and a tenth of it, 720 or 1200 fit vectors, and ridge penalties "
        "lam x mean(x²) x n_fit (lam = 0: least squares), and the cross-validated ridge (`cv`: the default of "
        "`fit_linear_propagation`, chosen on the fit vectors; the lam it chose in brackets). Vector norms are uniform "
        "in [0.5, 1.5] x the stated norm.", "",
        "## Changed in this version (issue 24)", "",
        "`fit_linear_propagation` used to fit plain least squares once it had at least d fit vectors (`ridge='auto'`, "
        "the lam = 0 column below); its default is now a ridge chosen by 5-fold cross-validation on the fit vectors "
        f"only (`ridge='cv'`, `propagation.cv_ridge`, lam from {DEFAULT_RIDGE_GRID[0]:g} to {DEFAULT_RIDGE_GRID[-1]:g}, "
        f"{DEFAULT_RIDGE_GRID.size} values), the new last column. The least-squares and fixed-ridge columns are the "
        "same fits as before. Held-out R², old default -> new default:", "",
        rc.table(["layer", "norm", "fit vectors", "old (`auto`: lam = 0)", "new (`cv`)"], moved), "",
        "## All fits", "",
        rc.table(["layer", "norm", "fit vectors"] + [f"lam = {lam:g}" for lam in LAMS] + ["cv (default)"], rows), "",
        "## Reading", "",
    ]
    for layer in LAYERS:
        b_big = max(best[(layer, big, n)] for n in N_FIT)
        b_small = max(best[(layer, small, n)] for n in N_FIT)
        gain = best[(layer, big, max(N_FIT))] - best[(layer, big, min(N_FIT))]
        c_big = max(cv[(layer, big, n)][0] for n in N_FIT)
        lines.append(
            f"- Layer {layer}: best held-out R² at the LTV's norm {b_big:.2f} (cross-validated ridge: {c_big:.2f}), "
            f"at a tenth of it {b_small:.2f}; "
            f"1200 instead of 720 fit vectors changes the best R² at the LTV's norm by {gain:+.2f}. "
            + ("The map is linear for small vectors and not at the LTV's size: the negative R² on the circuits page is "
               "the nonlinearity of vectors that large, not the fit." if b_small >= 0.5 and b_big < 0.2 else
               "At the LTV's size the fit becomes readable (R² >= 0.2) with more vectors or a ridge penalty: the "
               "near-square least-squares fit costs part of the R² on the circuits page." if b_big >= 0.2 else
               "Neither size fits: the map is not linear here."))
    lines += ["", "Consequence for the verdict: the rotation-vs-scaling claim is about how a vector of the LTV's "
              "size propagates; where that map is not linear, its polar decomposition describes no mechanism, and the "
              "circuits page's verdict (not testable here) stands for those layers. Where more vectors or a ridge penalty make "
              "the fit readable, the circuits page's 720-vector least-squares fit understates R², and a polar decomposition "
              "should be read from the better fit (not done here). circuits.md was computed with the old default "
              "(`ridge='auto'`, the lam = 0 column); the default is now the cross-validated ridge (the `cv` column), "
              "and the study issue re-runs that page with it."]
    rc.write_page(args.out, "propagation_fit.md", "\n".join(lines),
                  f"OMP_NUM_THREADS=1 python scripts/real_propagation_fit.py --seed {args.seed}", started)


if __name__ == "__main__":
    main()
