"""§3.2.2's claim "ν_r corresponds to the length of the trigger sequence" (docs/13): the
Residual SSM on the extended task over a grid of ν_r and N_trig.
"""
import time

import numpy as onp
from rssm_ref.experiments.common import finish, plan_run, SOLVED_PCT, train_and_evaluate
from rssm_ref.experiments.plots import plot_nu
from rssm_ref.experiments.reproduce import model_config
import dataclasses


def nu_answer(mean16, nu_rs, n_trigs, threshold=SOLVED_PCT):
    """The smallest ν_r that solves each N_trig ("solves": mean accuracy >= ``threshold``
    % at L = 16) and whether it equals N_trig. ``mean16`` (n_trig, nu_r).

    >>> a = nu_answer([[100, 100], [50, 99.5]], nu_rs=[1, 2], n_trigs=[1, 2])
    >>> a["smallest_nu_r"], a["equals_n_trig"], a["holds"]
    ([1, 2], [True, True], True)
    >>> nu_answer([[40, 100]], [1, 2], [1])["smallest_nu_r"]
    [2]
    """
    smallest, equal = [], []
    for i, N in enumerate(n_trigs):
        ok = [nu for j, nu in enumerate(nu_rs) if mean16[i][j] >= threshold]
        smallest.append(min(ok) if ok else None)
        equal.append(None if not ok else min(ok) == N)
    holds = all(e is True for e in equal)
    gaps = [N for N in n_trigs if N not in nu_rs]
    words = []
    for N, s in zip(n_trigs, smallest):
        words.append(f"N_trig {N}: " + (f"smallest nu_r {s}" if s is not None else "no nu_r solves"))
    text = ("yes: " if holds else "no: ") + "; ".join(words)
    if gaps:
        text += f" (nu_r = {', '.join(map(str, gaps))} not in the grid)"
    return {"question": "Is the smallest nu_r that solves the task equal to N_trig (§3.2.2)?",
            "criterion": f"solves: mean accuracy >= {threshold:g} % at L = 16",
            "smallest_nu_r": smallest, "equals_n_trig": equal, "holds": holds, "text": text}


def nu_plan(cfg):
    """The sweep's trainings, N_trig outer, then ν_r, then the seed (``plan_run`` entries;
    checkpoints ``residual-nu_r<ν>-ntrig<N>-seed<k>.npz`` in ``cfg.out``)."""
    base = model_config(cfg.reproduce_config("extended"), "residual")
    return [plan_run(cfg, "extended", dataclasses.replace(base, nu_r=nu, n_trig=N), seed,
                     f"residual-nu_r{nu}-ntrig{N}-seed{seed}")
            for N in cfg.n_trigs for nu in cfg.nu_rs for seed in cfg.seeds]


def nu_sweep(cfg, progress=None):
    """The Residual SSM on the extended task for every ν_r in ``cfg.nu_rs`` and N_trig in
    ``cfg.n_trigs`` (trigger (0, …, N_trig − 1); N_trig = 1 is the induction-like task),
    seeds ``cfg.seeds``, accuracy at ``cfg.lengths`` (default 16 and 1024); the answer
    from ``nu_answer``. Returns the results dict."""
    t0 = time.perf_counter()
    plan = nu_plan(cfg)
    runs = train_and_evaluate(cfg, plan, progress,
                               lambda mc: f"nu_r {mc.nu_r}, N_trig {mc.n_trig}")
    shape = (len(cfg.n_trigs), len(cfg.nu_rs), len(cfg.seeds), len(cfg.lengths))
    acc = onp.array([r["accuracy"] for r in runs]).reshape(shape)
    table = {"nu_r": list(cfg.nu_rs), "n_trig": list(cfg.n_trigs), "lengths": list(cfg.lengths),
             "mean": acc.mean(2).round(4).tolist(), "min": acc.min(2).tolist(),
             "max": acc.max(2).tolist()}
    i16 = list(cfg.lengths).index(16) if 16 in cfg.lengths else 0
    answer = nu_answer(acc.mean(2)[:, :, i16], cfg.nu_rs, cfg.n_trigs)
    answer["at_length"] = int(cfg.lengths[i16])
    results = {"settings": {"lengths": list(cfg.lengths), "eval_n": cfg.eval_n,
                            "nu_r": list(cfg.nu_rs), "n_trig": list(cfg.n_trigs),
                            "solved_pct": SOLVED_PCT},
               "runs": runs, "table": table, "answer": answer}
    return finish(cfg, results, t0, plot_nu)
