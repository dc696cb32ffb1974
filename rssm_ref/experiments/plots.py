"""The figures of the experiments beyond the paper (docs/13-beyond-the-paper.md): one
plot per experiment from its results dictionary, matplotlib optional (``pip install
.[plot]``).
"""
import os

import numpy as onp
from rssm_ref.experiments.common import TARGET_PCT, TASKS2
from rssm_ref.experiments.reproduce import chance, measured_label, MODEL_NAMES


def suptitle(fig, results):
    title = results["title"]
    if results.get("quick"):
        title += "\nSMOKE RUN (--quick): a pipeline check, not the experiment"
    seeds = results["seeds"]
    title += f"\n{'seed' if len(seeds) == 1 else 'seeds'} {', '.join(map(str, seeds))}"
    fig.suptitle(title, fontsize=9)


def finish_accuracy_panels(fig, axes, results):
    """The shared finish of an accuracy-vs-length figure: y label and range, legend, title."""
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_ylim(0, 105)
    axes[0].legend(fontsize=7, loc="lower left")
    suptitle(fig, results)
    return fig


def _nan(vals):
    """None (the leak law's reach exceeded) as a gap in the line."""
    return [onp.nan if v is None else v for v in vals]


def plot_lengths(plt, results):
    """Measured accuracy against L per task, beside the leak prediction, drawn faint and
    labelled unreliable while ``results["prediction_reliable"]`` is not true (a
    results.json without the flag: unreliable too)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    shaky = not results.get("prediction_reliable", False)
    pred = "leak prediction" + (" (unreliable, see docs/13)" if shaky else "")
    for ax, task in zip(axes, TASKS2):
        t, c = results["table"][task], results["prediction_curve"][task]
        L = t["lengths"]
        ax.fill_between(L, t["min"], t["max"], color="tab:blue", alpha=0.15, lw=0)
        ax.plot(L, t["mean"], "o-", color="tab:blue", zorder=3,
                label=measured_label(t.get("seeds", results["seeds"]), spread="band min..max"))
        ax.plot(L, _nan(t["predicted"]), "s", color="tab:red", mfc="white",
                alpha=0.6 if shaky else 1.0, label=pred)
        ax.plot(c["lengths"], _nan(c["predicted"]), "--", color="tab:red", lw=1,
                alpha=0.6 if shaky else 1.0,
                label="leak prediction curve" + (" (unreliable)" if shaky else ""))
        ax.axhline(TARGET_PCT, color="green", ls=":", lw=1, label=f"target {TARGET_PCT} %")
        ax.axhline(chance(task), color="gray", ls=":", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("L at evaluation (trained at L = 16)")
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3)
    return finish_accuracy_panels(fig, axes, results)


def plot_nu(plt, results):
    t = results["table"]
    mean = onp.array(t["mean"])
    fig, axes = plt.subplots(1, len(t["lengths"]), figsize=(5.2 * len(t["lengths"]), 4.6),
                             squeeze=False)
    for li, ax in enumerate(axes[0]):
        im = ax.imshow(mean[:, :, li], vmin=0, vmax=100, cmap="viridis", origin="lower",
                       aspect="auto")
        for i, N in enumerate(t["n_trig"]):
            for j, nu in enumerate(t["nu_r"]):
                v = mean[i, j, li]
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                        color="black" if v > 60 else "white",
                        fontweight="bold" if nu == N else "normal")
        ax.set_xticks(range(len(t["nu_r"])), [str(v) for v in t["nu_r"]])
        ax.set_yticks(range(len(t["n_trig"])), [str(v) for v in t["n_trig"]])
        ax.set_xlabel("nu_r (order of Sigma_r)")
        ax.set_ylabel("N_trig (trigger length)")
        ax.set_title(f"mean accuracy (%) at L = {t['lengths'][li]} (bold: nu_r = N_trig)",
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    suptitle(fig, results)
    return fig


def plot_window(plt, results):
    t = results["table"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    L = t["lengths"]
    paper = [(x, p) for x, p in zip(L, t["paper_selective"]) if p is not None]
    if paper:
        ax.plot(*zip(*paper), "s--", color="gray", mfc="white", label="paper, Selective SSM (w = 1)")
    for i, w in enumerate(t["windows"]):
        line, = ax.plot(L, t["mean"][i], "o-",
                        label=measured_label(results["seeds"], f"w = {w}", "band min..max"))
        ax.fill_between(L, t["min"][i], t["max"][i], color=line.get_color(), alpha=0.12, lw=0)
    ax.axhline(chance("extended"), color="gray", ls=":", lw=1, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("L at evaluation (trained at L = 16)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    suptitle(fig, results)
    return fig


def plot_zoh(plt, results):
    t = results["table"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, task in zip(axes, TASKS2):
        for gate, color in (("euler", "tab:blue"), ("zoh", "tab:orange")):
            g = t[task][gate]
            ax.fill_between(t["lengths"], g["min"], g["max"], color=color, alpha=0.15, lw=0)
            name = f"gate = {gate}" + (" (eq. (5))" if gate == "euler" else " (Remark 3.1)")
            ax.plot(t["lengths"], g["mean"], "o-", color=color,
                    label=measured_label(results["seeds"], name, "band min..max"))
        ax.plot(t["lengths"], [100] * len(t["lengths"]), "s--", color="gray", mfc="white",
                label="paper (eq. (5))")
        ax.axhline(chance(task), color="gray", ls=":", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_title("Table 1 (induction)" if task == "induction" else "Table 2 (extended)",
                     fontsize=9)
        ax.set_xlabel("L at evaluation (trained at L = 16)")
        ax.grid(alpha=0.3)
    return finish_accuracy_panels(fig, axes, results)


MODEL_COLORS = {"residual": "tab:blue", "selective": "tab:orange"}
EXPERIMENT_MARKERS = {"tables": "o", "zoh_gate": "s", "nu_sweep": "^", "window": "D"}
EXPERIMENT_LABELS = {"tables": "Tables 1-2 (reproduce)", "zoh_gate": "zoh_gate",
                     "nu_sweep": "nu_sweep", "window": "window"}


def plot_cost(plt, results):
    """Two panels, every model of the tables a point: parameters against training time
    per step, and accuracy against time per step; colour = model (Residual, Selective),
    marker = the experiment the model comes from."""
    rows = results["table"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for r in rows:
        style = dict(color=MODEL_COLORS.get(r["model"], "black"), s=22,
                     marker=EXPERIMENT_MARKERS.get(r["experiments"][0], "x"))
        axes[0].scatter(r["param_count"]["total"], 1e3 * r["per_step_seconds"], **style)
        acc = r["accuracy"]
        if acc:
            L_max = "1024" if "1024" in acc else max(acc, key=int)    # Tables' longest
            axes[1].scatter(1e3 * r["per_step_seconds"], acc[L_max], **style)
            axes[1].annotate(f"{r['label']} (L {L_max})", (1e3 * r["per_step_seconds"], acc[L_max]),
                             fontsize=5)
    for model, c in MODEL_COLORS.items():
        axes[0].scatter([], [], color=c, marker="o", label=MODEL_NAMES[model])
    for name, mk in EXPERIMENT_MARKERS.items():
        axes[0].scatter([], [], color="gray", marker=mk, label=EXPERIMENT_LABELS[name])
    axes[0].set_xlabel("parameters")
    axes[0].set_ylabel("training time per step (ms)")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    axes[1].set_xlabel("training time per step (ms)")
    axes[1].set_ylabel("accuracy (%) at L = 1024 (else the longest measured)")
    axes[1].set_ylim(0, 105)
    axes[1].grid(alpha=0.3)
    if not any(r["accuracy"] for r in rows):
        looked = results.get("settings", {}).get("accuracy_files", [])
        folders = ", ".join(os.path.dirname(d["path"]) for d in looked)
        axes[1].text(0.5, 0.5, f"no accuracies found in\n{folders}\n(--checkpoints, "
                     "--results-from)", ha="center", va="center", fontsize=8, wrap=True,
                     transform=axes[1].transAxes)
    suptitle(fig, results)
    return fig
