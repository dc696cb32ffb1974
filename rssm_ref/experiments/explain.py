"""Take one sequence through a model and show what each part of it does.

The model comes from a parameter file in the oracle's format (docs/formats.md: written
by ``init``, or by you from your own model), from a checkpoint written by ``reproduce``
(converted to that format; it names its model and task, so ``model`` and ``task`` may
be left out, and a contradicting one is refused), or, with neither, from a short
training run. The sequence is one task sequence (when the params hold an embedding with
a row for every token of the task), the first sequence of an inputs file (``inputs``),
or else a Gaussian input u ~ N(0, 1), seeded.

Residual SSM (Fig. 3, eq. (5)): the trace lists, per step t, the token, y_s(t), the
residual r(t), the gate s(t) = σ(r(t) + c) and the gate output y(t+1). Figures: s(t)
along the sequence with the trigger and answer positions marked and, when it opens once,
where and why there (``gate_opening``: eq. (5) writes y_s(t) into y(t+1), so a Σ that
passes the answer on one step late has its gate open one step after the answer); poles
and zeros of Σ and Σ_r, per channel, with the unit circle; their impulse responses per
channel (coincident channels drawn visibly apart and named so in the legend).

Selective SSM (eqs. (2)-(4)): per step the token, Δ_t (mean over channels) and the state
norm ‖h(t+1)‖, then its sizes, conventions and the ranges of A, Δ_t and exp(Δ_t A)
(``selective_summary``); the figure shows Δ_t along the sequence, the tokens above it.

LTI system: per step u(t) and y(t); figures: poles/zeros and impulse response, titled
with the system's sizes (``lti_systems``).

A reproduce checkpoint's accuracies, from the results.json beside it, follow the trace
(``stored_accuracy``).

Outputs in ``out`` (created; its parent must exist): the figures, ``trace.json`` (the
table, positions, target, prediction, summary, gate opening, sources) and ``trace.npz``
(u, y, the intermediates, tokens, and the params as ``param__<key>``), and
``progress.log`` when a model is trained here. The figure functions take trace.json's
and trace.npz's contents (``gate_figure(doc, arrays)``, ``delta_figure``) or the systems
(``pole_zero_figure(systems)``, ``impulse_figure``) and return the matplotlib figure.

Glossary
--------
ExplainConfig(model, task, params, inputs, seed, out, L, steps, gate, discretization, output)
explain(cfg, progress=None) -> {"trace": str, "figures": [paths], "files": [paths],
                                "prediction": int | None, "target": int | None}
oracle_params(model_cfg, params) -> params dict in the oracle's format (docs/formats.md)
checkpoint_identity(path, model, task) -> (model, task)
residual_systems(P), lti_systems(P) -> ((name, TransferFunction, input label, output label), ...)

>>> import tempfile
>>> res = explain(ExplainConfig("residual", "induction", steps=30, out=tempfile.mkdtemp(), L=12))
>>> res["trace"].splitlines()[0].split()[:4]
['t', 'token', 'y_s', 'r']
"""
import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as onp

from rssm_ref.experiments.common import model_cfg_from_run_config
from rssm_ref.experiments.lengths import (gate_writes, HOLD_PCT, law_horizon,
                                          PREDICTION_RELIABLE)
from rssm_ref.experiments.reproduce import (model_config, prepare_out, read_run_config,
                                            ReproduceConfig)
from rssm_ref.lti import StateSpace, TransferFunction
from rssm_ref.oracle import formats, forward
from rssm_ref.selective_ssm import A_from_log
from rssm_ref.training.head import init_params, ModelConfig, residual_core_arrays
from rssm_ref.training.tasks import (DEFAULT_TOKENS, extended_induction_head, induction_head,
                                     vocab_size)
from rssm_ref.training.train import load_checkpoint, train, TrainConfig
from rssm_ref.util.paths import atomic_savefig, atomic_write_text, check_outputs
from rssm_ref.tolerances import TOLERANCES
from rssm_ref.util.invocation import prog
from rssm_ref.util.progress import Progress

__all__ = ["ExplainConfig", "explain", "oracle_params", "checkpoint_identity",
           "selective_summary", "stored_accuracy", "leak_horizon", "gate_opening", "gate_figure",
           "delta_figure", "pole_zero_figure", "impulse_figure", "residual_systems",
           "lti_systems"]

MODELS = ("residual", "selective", "lti")
TASK_TITLES = {"induction": "induction-head", "extended": "extended induction-head"}
TRIGGER_LEN = {"induction": 1, "extended": 4}


@dataclass(frozen=True)
class ExplainConfig:
    """Options of ``rssm-ref explain`` (see its --help). ``model`` and ``task`` None: the
    ones a reproduce checkpoint names (its run config; else its parameter names show the
    model), else residual and induction; given, they must agree with the checkpoint."""
    model: Optional[str] = None
    task: Optional[str] = None
    params: str = ""              # oracle-format params file or a reproduce checkpoint
    inputs: str = ""              # optional oracle-format inputs file (its first sequence)
    seed: int = 0
    out: str = "explain"
    L: int = 32
    steps: int = 3000             # training steps when no params file is given
    gate: Optional[str] = None
    discretization: Optional[str] = None
    output: Optional[str] = None
    checkpoint: str = ""          # older name of ``params``

    def __post_init__(self):
        if self.params and self.checkpoint and self.params != self.checkpoint:
            raise ValueError("--checkpoint: given with --params (expected only --params)")
        model, task = checkpoint_identity(self.params_path, self.model, self.task)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "task", task)
        if self.model not in MODELS:
            raise ValueError(f"model: {self.model!r} (expected one of {', '.join(MODELS)})")
        vocab_size(self.task)                      # validates the task name
        if int(self.L) < 2 * TRIGGER_LEN[self.task] + 1:
            raise ValueError(f"--length: {self.L} (expected >= {2 * TRIGGER_LEN[self.task] + 1} "
                             f"for the {self.task} task)")
        if int(self.steps) < 1:
            raise ValueError(f"--steps: {self.steps} (expected a positive integer)")
        if self.model == "lti" and not (self.params or self.checkpoint):
            raise ValueError("--params: required for --model lti (expected a params file, e.g. "
                             f"from `{prog()} init --model lti`)")

    @property
    def params_path(self):
        return self.params or self.checkpoint


def checkpoint_identity(path, model=None, task=None):
    """(model, task) to explain: ``model``/``task`` as given, the rest from what a reproduce
    checkpoint at ``path`` names (its run config, else its parameter names show the model),
    else "residual" / "induction". A given model or task that contradicts the checkpoint
    is refused (ValueError naming the flag and what the file holds).

    >>> checkpoint_identity("", None, None)
    ('residual', 'induction')
    """
    rc = None
    keys = _checkpoint_keys(path)
    if keys is not None:
        try:
            rc = read_run_config(path)
        except ValueError:           # an unreadable run config: the parameter names decide
            rc = None
    found = (rc or {}).get("model") or _model_of_keys(keys)
    how = "its run config" if rc and rc.get("model") else "its parameter names"
    if model is not None and found is not None and model != found:
        raise ValueError(f"--model {model}: {path} is a checkpoint of a {found} model ({how}); "
                         f"its parameters {sorted(keys)} do not describe a{'n' if model == 'lti' else ''} "
                         f"{model} model "
                         f"(expected --model {found}, or leave --model out: the checkpoint "
                         "names its model)")
    have_task = (rc or {}).get("task")
    if task is not None and have_task is not None and task != have_task:
        raise ValueError(f"--task {task}: {path} was trained on the {have_task} task (its run "
                         f"config) (expected --task {have_task}, or leave --task out)")
    return model or found or "residual", task or have_task or "induction"


def _model_of_keys(keys):
    """The model whose training parameters ``keys`` are (rssm_ref.training.head), or None."""
    if not keys:
        return None
    if "A_log" in keys:
        return "selective"
    if "sigma_num" in keys:
        return "residual"
    return None


def oracle_params(model_cfg, params):
    """A trained model's arrays (rssm_ref.training.head) in the oracle's params format.

    Residual: sigma_num, sigma_den, r_num, r_den, gate_bias (the stable parameterization
    and the fixed gain folded in, ``residual_core_arrays``) and embedding = E.
    Selective: A = −exp(A_log), W_delta, W_B, W_C, delta_bias (and D with ``use_D``),
    embedding = E.

    >>> cfg = ModelConfig("residual", "induction")
    >>> sorted(oracle_params(cfg, init_params(cfg)))
    ['embedding', 'gate_bias', 'r_den', 'r_num', 'sigma_den', 'sigma_num']
    """
    if model_cfg.model == "residual":
        keys = ("sigma_num", "sigma_den", "r_num", "r_den", "gate_bias")
        P = dict(zip(keys, residual_core_arrays(params, model_cfg)))
    else:
        P = {"A": A_from_log(params["A_log"]), "W_delta": params["W_delta"],
             "W_B": params["W_B"], "W_C": params["W_C"], "delta_bias": params["delta_bias"]}
        if "D" in params:                 # trained with use_D
            P["D"] = params["D"]
    P["embedding"] = params["E"]
    return {k: onp.array(v, dtype=onp.float64) for k, v in P.items()}


def _model_config(cfg):
    """The model explained: a reproduce checkpoint's own options (its run config), else
    the reproduce recipe's model for the task (what explain trains when given no params)."""
    if cfg.params_path and os.path.isfile(cfg.params_path):
        try:
            rc = read_run_config(cfg.params_path)
        except Exception:            # not a checkpoint: the oracle's format, read later
            rc = None
        if rc:
            fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"model", "task"}
            return ModelConfig(cfg.model, cfg.task, **{k: (tuple(v) if isinstance(v, list) else v)
                                                        for k, v in rc.items() if k in fields})
    recipe = model_config(ReproduceConfig(task=cfg.task, gate=cfg.gate or "euler",
                                          discretization=cfg.discretization or "zoh",
                                          output=cfg.output or "before"), cfg.model)
    keys = _checkpoint_keys(cfg.params_path)
    if keys is None:
        return recipe
    # a checkpoint without a run config (an older rssm-ref, or written by hand): the
    # recipe's options, with what the parameters themselves show (readout, bias, window)
    fixed = {"readout": "linear" if "W_out" in keys else "cosine"}
    if cfg.model == "residual":
        fixed["gate_bias"] = "c" in keys
    return dataclasses.replace(recipe, **fixed)


def _checkpoint_keys(path):
    """The parameter names of a reproduce checkpoint at ``path``, or None (not one)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with onp.load(path, allow_pickle=False) as z:
            names = [k[len("param/"):] for k in z.files if k.startswith("param/")]
    except Exception:                # not an npz: the loader reports it later
        return None
    return set(names) or None


def _is_checkpoint(arrays):
    return "step" in arrays and any(k.startswith("param/") for k in arrays)


def _load(cfg, model_cfg, progress):
    """(oracle params, sizes, source text)."""
    path = cfg.params_path
    if not path:
        tcfg = TrainConfig(steps=cfg.steps, seed=cfg.seed,
                           lr=0.02 if cfg.model == "residual" else 5e-3,
                           warmup=min(200, max(1, cfg.steps // 10)),
                           log_every=max(1, min(100, cfg.steps // 20)))
        progress.message(f"train {cfg.model} on the {cfg.task} task at L = {tcfg.L}: "
                         f"{tcfg.total_steps} steps (no --params given)")
        task = progress.task(f"train {cfg.model}/seed {cfg.seed}", tcfg.total_steps)
        params, _ = train(model_cfg, tcfg, progress=lambda k, info: task.update(
            k, rate=info.get("steps_per_s"), loss=info.get("loss"), acc=info.get("acc")))
        task.close()
        P = oracle_params(model_cfg, params)
        source = f"trained here: {tcfg.total_steps} steps, seed {cfg.seed}"
    else:
        arrays = formats.load_npz(path, "params")
        if _is_checkpoint(arrays):
            if cfg.model == "lti":
                raise ValueError(f"{path}: a training checkpoint (expected an lti params file "
                                 "in the oracle's format)")
            params = load_checkpoint(path)[0]
            if set(params) != set(init_params(model_cfg)):
                raise ValueError(f"{path}: parameters {sorted(params)} do not describe a "
                                 f"{cfg.model} model for the {cfg.task} task")
            P = oracle_params(model_cfg, params)
            source = (f"{path} (a reproduce checkpoint, saved at step {load_checkpoint(path)[3]} "
                      "of its schedule)")
        else:
            P = arrays
            source = f"{path} (oracle format)"
    P, sizes = formats.check_params(cfg.model, P, where=path or "params")
    return P, sizes, source


def _sequence(cfg, P, sizes):
    """u (1, L, m), tokens (L,) or None, target, trigger position p, where-from text."""
    if cfg.inputs:
        U, _ = formats.load_inputs(cfg.inputs, cfg.model, sizes,
                                   params_where=cfg.params_path or "params")
        if "tokens" in U:
            tok = U["tokens"][0]
            return P["embedding"][tok][None], tok, None, None, f"{cfg.inputs} (sequence 0)"
        return U["u"][:1], None, None, None, f"{cfg.inputs} (sequence 0)"
    emb = P.get("embedding")
    need = vocab_size(cfg.task)
    if emb is not None and emb.shape[0] >= need:
        rng = onp.random.default_rng([cfg.seed, 7])
        gen = induction_head if cfg.task == "induction" else extended_induction_head
        tok, tgt, p = gen(rng, 1, cfg.L, DEFAULT_TOKENS[cfg.task], return_positions=True)
        return (emb[tok[0]][None], tok[0], int(tgt[0]), int(p[0]),
                f"one {cfg.task} sequence, seed {cfg.seed}")
    m = sizes["m"]
    u = onp.random.default_rng([cfg.seed, 8]).standard_normal((1, cfg.L, m))
    why = ("no embedding" if emb is None else
           f"the embedding has {emb.shape[0]} rows, the {cfg.task} task needs {need}")
    return u, None, None, None, f"u ~ N(0, 1), seed {cfg.seed} ({why})"


def _prediction(P, y_last, n_content):
    """argmax_k cos(E_k, y(L)) over the content tokens (the tied cosine readout)."""
    E = P["embedding"][:n_content]
    cos = E @ y_last / (onp.linalg.norm(E, axis=1) * onp.linalg.norm(y_last) + 1e-12)
    return int(onp.argmax(cos))


def _savefig(fig, path):
    plt = _plt()
    try:
        atomic_savefig(fig, path, dpi=100, bbox_inches="tight")   # titles and legends kept whole
    finally:
        plt.close(fig)


def explain(cfg, progress=None):
    """Trace one sequence through the model; write figures and the trace into ``cfg.out``.

    ``progress``: a ``rssm_ref.util.progress.Progress`` for the training run (None: silent;
    the lines still go to ``out/progress.log`` when a model is trained).
    """
    # before anything is trained or read: the files written into --out are not inputs
    check_outputs([("--out", os.path.join(cfg.out, n))
                   for n in ("trace.json", "trace.npz", "progress.log")],
                  [("--params", cfg.params_path), ("--inputs", cfg.inputs)],
                  folders=[("--out", cfg.out)])
    prepare_out(cfg.out)
    if not cfg.params_path:
        log = os.path.join(cfg.out, "progress.log")
        progress = progress.with_log(log) if progress is not None else Progress(log_path=log)
    progress = progress or Progress()
    model_cfg = _model_config(cfg) if cfg.model != "lti" else None
    P, sizes, source = _load(cfg, model_cfg, progress)
    u, tok, target, p, seq_source = _sequence(cfg, P, sizes)
    conv = {"gate": cfg.gate} if cfg.model == "residual" else (
        {"discretization": cfg.discretization, "output": cfg.output} if cfg.model == "selective" else {})
    core = {k: v for k, v in P.items() if k != "embedding"}
    out = forward.compute(cfg.model, core, {"u": u}, intermediates=cfg.model != "lti", **conv)
    opts = forward.resolve_options(cfg.model, **conv)
    y = out["y"]
    L = u.shape[1]
    pred = _prediction(P, y[0, -1], DEFAULT_TOKENS[cfg.task]) if tok is not None and target is not None else None
    answer = p + TRIGGER_LEN[cfg.task] if p is not None else None
    rows, lines = _trace_rows(cfg, u, tok, y, out, p, answer)
    if target is not None:
        lines.append(f"target {target}, prediction {pred}")
    arrays = {"u": u[0], "y": y[0]}
    arrays.update({k: v[0] for k, v in out.items() if k not in ("y",)})
    if tok is not None:
        arrays["tokens"] = onp.asarray(tok, dtype=onp.int64)
    arrays.update({formats.PARAM_PREFIX + k: v for k, v in P.items()})
    options = {k: v for k, v in opts.items() if k in ("gate", "discretization", "output")
               and v is not None}
    summary = {}
    if cfg.model == "selective":
        summary = selective_summary(P, arrays, options)
    stored = stored_accuracy(cfg.params_path, cfg.model)
    if stored is not None:
        summary["stored_accuracy"] = stored
    horizon = leak_horizon(cfg.params_path, cfg.model, cfg.task)
    if horizon is not None:
        summary["leak"] = horizon
    lines += summary_lines(cfg.model, summary)
    lines.append(f"params: {source}; sequence: {seq_source}")
    doc = {"model": cfg.model, "task": cfg.task, "params": source, "sequence": seq_source,
           "options": options, "L": L, "tokens": None if tok is None else [int(t) for t in tok],
           "trigger_position": p, "answer_position": answer, "target": target,
           "prediction": pred, "summary": summary, "rows": rows}
    if cfg.model == "residual":
        doc["gate_opening"] = gate_opening(doc, arrays)
        figs = [("gate", gate_figure(doc, arrays))]
        systems = residual_systems(P)
    elif cfg.model == "selective":
        figs, systems = [("delta", delta_figure(doc, arrays))], None
    else:
        figs, systems = [], lti_systems(P)
    if systems is not None:
        figs += [("poles-zeros", pole_zero_figure(systems)), ("impulse", impulse_figure(systems))]
    tag = _ctx(doc)["tag"] if cfg.model != "lti" else "lti"
    figures = []
    for name, fig in figs:
        figures.append(os.path.join(cfg.out, f"{name}-{tag}.png"))
        _savefig(fig, figures[-1])
    doc.update(figures=[os.path.basename(f) for f in figures], config=asdict(cfg))
    jpath = os.path.join(cfg.out, "trace.json")
    atomic_write_text(jpath, json.dumps(doc, indent=1) + "\n")
    npath = os.path.join(cfg.out, "trace.npz")
    formats.save_npz_atomic(npath, arrays)
    return {"trace": "\n".join(lines), "figures": figures, "files": [jpath, npath],
            "prediction": pred, "target": target}


# ------------------------------------------------------------------------------ summaries
def selective_summary(P, arrays, options):
    """What a Selective SSM is (eqs. (2)-(4)): its sizes, conventions, the ranges of its
    continuous poles A = −exp(A_log) and, along the traced sequence, of the step size Δ_t
    (eq. (4a)) and of the fraction exp(Δ_t A) (eq. (3a)) of each state kept per step.

    Shapes: P["A"] (m, n), arrays["delta"] (L, m). Returns a JSON-able dict.

    >>> P = {"A": -onp.array([[1.0, 2.0]]), "W_delta": onp.ones((1, 1)),
    ...      "W_B": onp.ones((2, 1)), "W_C": onp.ones((2, 1))}
    >>> d = selective_summary(P, {"delta": onp.array([[0.5], [1.0]])}, {"output": "before"})
    >>> d["m"], d["n"], d["A_range"], d["delta_range"], d["kept_range"] == [float(onp.exp(-2.0)), float(onp.exp(-0.5))]
    (1, 2, [-2.0, -1.0], [0.5, 1.0], True)
    """
    A = onp.asarray(P["A"], float)
    delta = onp.asarray(arrays["delta"], float)
    kept = onp.exp(delta[:, :, None] * A[None])            # (L, m, n), eq. (3a)
    return {"m": int(A.shape[0]), "n": int(A.shape[1]),
            "shapes": {k: list(onp.shape(P[k])) for k in sorted(P)},
            "options": dict(options),
            "A_range": [float(A.min()), float(A.max())],
            "delta_range": [float(delta.min()), float(delta.max())],
            "delta_mean": float(delta.mean()),
            "kept_range": [float(kept.min()), float(kept.max())]}


def stored_accuracy(path, model):
    """The accuracies reproduce measured for the checkpoint at ``path`` (its run in the
    results.json beside it, matched by file name and model), or None.

    Returns {"file", "seed", "lengths", "accuracy" (%), "quick"}."""
    if not path:
        return None
    res_path = os.path.join(os.path.dirname(os.path.abspath(path)), "results.json")
    try:
        with open(res_path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError):      # none beside it: nothing stored
        return None
    runs = data.get("runs") if isinstance(data, dict) else None
    for r in runs if isinstance(runs, list) else []:
        if (isinstance(r, dict) and r.get("checkpoint") == os.path.basename(path)
                and r.get("model") == model and r.get("accuracy")):
            return {"file": os.path.join(os.path.dirname(path), "results.json"),
                    "seed": r.get("seed"), "lengths": r.get("lengths"),
                    "accuracy": r.get("accuracy"), "quick": bool(data.get("quick"))}
    return None


def leak_horizon(path, model, task):
    """The leak law's prediction for a Residual SSM reproduce checkpoint (docs/13, section
    1; ``rssm_ref.experiments.lengths.gate_writes``): its gate's leak per step, where it
    writes the answer, and the length it holds to — the last length 2^(j/4) before the
    first at which the law predicts less than HOLD_PCT (``law_horizon``); "first_below_L"
    None: it holds as far as the traced steps reach. None for anything but a reproduce
    checkpoint of a Residual SSM (the law is measured on sequences of its own task, with
    its own training config)."""
    if model != "residual" or not path:
        return None
    try:
        rc = read_run_config(path)
    except ValueError:
        return None
    if rc is None or rc.get("model") != "residual" or rc.get("task") != task:
        return None
    mcfg = model_cfg_from_run_config(rc, path, task)
    gw = gate_writes(mcfg, load_checkpoint(path)[0])
    st = gw["stats"]
    return {"leak_per_step": st["leak_per_step"], "opening_lag": st["opening_lag"],
            **law_horizon(gw), "hold_pct": HOLD_PCT,
            "measured_on": f"{len(gw['targets'])} sequences at L = {gw['L']}",
            "reliable": PREDICTION_RELIABLE}


def horizon_text(lk):
    """"holds to L ≈ …" from ``law_horizon``'s fields."""
    pct = f"{lk['hold_pct']:g} %"
    if lk["first_below_L"] is None:
        return (f"holds beyond L ≈ {lk['holds_to_L']} (≥ {pct} as far as the "
                f"{lk['pool_steps']} traced off-trigger steps reach)")
    if lk["holds_to_L"] is None:
        return f"below {pct} already at L = {lk['first_below_L']}"
    return f"holds to L ≈ {lk['holds_to_L']} (below {pct} from L ≈ {lk['first_below_L']})"


def summary_lines(model, summary):
    """The summary as text lines below the trace table."""
    lines = []
    lk = summary.get("leak")
    if lk:
        lines.append(f"leak law (docs/13 section 1): {lk['leak_per_step']:.3g} leaked per "
                     f"step after the gate writes the answer {lk['opening_lag']:.2g} step(s) "
                     f"after it; {horizon_text(lk)} (measured on {lk['measured_on']})")
    if model == "selective" and "A_range" in summary:
        d = summary
        shapes = ", ".join(f"{k} {tuple(v)}" for k, v in d["shapes"].items())
        conv = d["options"]
        lines += [f"Selective SSM (eqs. (2)-(4)): m = {d['m']} channels, n = {d['n']} states "
                  f"each; {shapes}",
                  f"  discretization {conv.get('discretization')} (eq. (3b)), output "
                  f"{conv.get('output')} the update (eq. (2))",
                  f"  A = -exp(A_log) in [{d['A_range'][0]:.4g}, {d['A_range'][1]:.4g}]; along "
                  f"this sequence delta (eq. (4a)) in [{d['delta_range'][0]:.4g}, "
                  f"{d['delta_range'][1]:.4g}] (mean {d['delta_mean']:.4g}), each state keeps "
                  f"exp(delta A) in [{d['kept_range'][0]:.4g}, {d['kept_range'][1]:.4g}] per "
                  "step (eq. (3a))"]
    st = summary.get("stored_accuracy")
    if st:
        accs = ", ".join(f"L{L} {a:.1f}" for L, a in zip(st["lengths"], st["accuracy"]))
        lines.append(f"stored accuracy (%) of this checkpoint ({st['file']}, seed {st['seed']}"
                     f"{', smoke run' if st['quick'] else ''}): {accs}")
    return lines


def _v(x):
    return "(" + ", ".join(f"{v:6.3f}" for v in onp.atleast_1d(x)) + ")"


def _trace_rows(cfg, u, tok, y, out, p, answer):
    """Per-step dicts (for trace.json) and the text table."""
    L = u.shape[1]

    def mark(t):
        if p is None:
            return ""
        k = TRIGGER_LEN[cfg.task]
        if p <= t < p + k:
            return "  <- first trigger"
        if t == answer:
            return "  <- answer"
        if t >= L - k:
            return "  <- trigger again (query)"
        return ""

    first = "token" if tok is not None else "u"
    rows, lines = [], []
    if cfg.model == "residual":
        w = 17 if tok is None else 5
        lines.append(f"{'t':>3} {first:>{w}} {'y_s':>17} {'r':>9} {'s':>7} {'y(t+1)':>17}")
        for t in range(L):
            shown = str(tok[t]) if tok is not None else _v(u[0, t])
            rows.append({"t": t, "token": None if tok is None else int(tok[t]),
                         "u": u[0, t].tolist(), "y_s": out["y_s"][0, t].tolist(),
                         "r": float(out["r"][0, t]), "s": float(out["s"][0, t]),
                         "y_next": y[0, t].tolist()})
            lines.append(f"{t:>3} {shown:>{w}} {_v(out['y_s'][0, t]):>17} {out['r'][0, t]:>9.3f} "
                         f"{out['s'][0, t]:>7.4f} {_v(y[0, t]):>17}{mark(t)}")
    elif cfg.model == "selective":
        w = 5 if tok is not None else 9
        lines.append(f"{'t':>3} {first:>{w}} {'mean delta':>11} {'|h(t+1)|':>10}")
        for t in range(L):
            shown = str(tok[t]) if tok is not None else f"{onp.linalg.norm(u[0, t]):.3f}"
            d = out["delta"][0, t]
            h = onp.linalg.norm(out["h"][0, t])
            rows.append({"t": t, "token": None if tok is None else int(tok[t]),
                         "mean_delta": float(d.mean()), "h_norm": float(h),
                         "y": y[0, t].tolist()})
            lines.append(f"{t:>3} {shown:>{w}} {d.mean():>11.4f} {h:>10.4f}{mark(t)}")
    else:
        lines.append(f"{'t':>3} {'u':>17} {'y':>17}")
        for t in range(L):
            rows.append({"t": t, "u": u[0, t].tolist(), "y": y[0, t].tolist()})
            lines.append(f"{t:>3} {_v(u[0, t]):>17} {_v(y[0, t]):>17}")
    return rows, lines


# ------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _ctx(doc):
    """What the sequence figures need from a trace document (trace.json's keys)."""
    tok, target = doc["tokens"], doc["target"]
    return {"task": doc["task"], "tok": tok, "p": doc["trigger_position"],
            "answer": doc["answer_position"], "target": target, "pred": doc["prediction"],
            "L": doc["L"], "tag": doc["task"] if tok is not None and target is not None else "input"}


def _sequence_axes(ax, ctx):
    """Integer t ticks, the tokens on a row above the axes (trigger tokens red, the
    answer green), the trigger span(s) shaded and the answer position marked."""
    L, tok, p, answer, task = ctx["L"], ctx["tok"], ctx["p"], ctx["answer"], ctx["task"]
    step = 1 if L <= 40 else (2 if L <= 80 else max(1, L // 40))
    ax.set_xticks(range(0, L, step))
    ax.set_xlim(-0.6, L - 0.4)
    ax.set_xlabel("t (position in the sequence)")
    if p is not None:
        k = TRIGGER_LEN[task]
        ax.axvspan(p - 0.5, p + k - 0.5, color="tab:red", alpha=0.12, lw=0,
                   label="trigger" if k == 1 else f"trigger sequence ({k} tokens)")
        ax.axvspan(L - k - 0.5, L - 0.5, color="tab:red", alpha=0.12, lw=0)
        ax.axvline(answer, color="tab:green", ls="--", lw=1.5,
                   label=f"answer position (target token {ctx['target']})")
    if tok is not None:
        top = ax.secondary_xaxis("top")
        top.set_xticks(range(L))
        fs = 10 if L <= 32 else (8 if L <= 64 else 6)
        top.set_xticklabels([str(t) for t in tok], fontsize=fs)
        top.set_xlabel("token", fontsize=9)
        top.tick_params(length=0)
        if p is not None:
            k = TRIGGER_LEN[task]
            marks = {**{t: "tab:red" for t in range(p, p + k)},
                     **{t: "tab:red" for t in range(L - k, L)}, answer: "tab:green"}
            for t, lab in enumerate(top.get_xticklabels()):
                if t in marks:
                    lab.set_color(marks[t])
                    lab.set_fontweight("bold")


def _pred_text(ctx):
    if ctx["target"] is None:
        return ""
    ok = "correct" if ctx["pred"] == ctx["target"] else "wrong"
    return f"; target {ctx['target']}, predicted {ctx['pred']} ({ok})"


def _legend_below(ax, ncol=3):
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol,
                  frameon=False)


def _points_at(E, n_content, v):
    """The content token whose embedding row is closest in angle to ``v`` (the tied
    cosine readout's answer for v)."""
    E = onp.asarray(E, float)[:n_content]
    cos = E @ v / (onp.linalg.norm(E, axis=1) * onp.linalg.norm(v) + 1e-12)
    return int(onp.argmax(cos))


def gate_opening(doc, arrays):
    """Where the Residual SSM's gate opens between the first trigger and the query, and
    which step's y_s carries the answer there (eq. (5): s(t) writes y_s(t) into y(t+1)).

    ``doc``: trace.json's keys (tokens, trigger_position, answer_position, target, task,
    L); ``arrays``: trace.npz's (s (L,), y_s (L, m), param__embedding (V, m)). Returns
    None without a task sequence or unless the gate opens (s >= 1/2) at exactly one
    position there, else {"t": that position, "s": its value, "lag": t − answer position,
    "y_s_carries_answer": the readout of y_s(t) is the target,
    "y_s_at_answer_carries_answer": the same at the answer position}.
    """
    p, q, target = doc["trigger_position"], doc["answer_position"], doc["target"]
    E = arrays.get(formats.PARAM_PREFIX + "embedding")
    if p is None or target is None or E is None:
        return None
    s, y_s = onp.asarray(arrays["s"], float), onp.asarray(arrays["y_s"], float)
    k = TRIGGER_LEN[doc["task"]]
    span = onp.arange(p, doc["L"] - k)              # the first trigger .. before the query
    opens = span[s[span] >= 0.5]
    if opens.size != 1:                             # shut throughout, or no single write
        return None
    t = int(opens[0])
    n = DEFAULT_TOKENS[doc["task"]]
    return {"t": t, "s": float(s[t]), "lag": t - q,
            "y_s_carries_answer": _points_at(E, n, y_s[t]) == target,
            "y_s_at_answer_carries_answer": _points_at(E, n, y_s[q]) == target}


def gate_opening_text(g, answer):
    """The legend's words for ``gate_opening``: a reason only where the data show it.

    >>> print(gate_opening_text({"t": 19, "s": 0.94, "lag": 1, "y_s_carries_answer": True,
    ...                          "y_s_at_answer_carries_answer": False}, 18))
    gate opens at t = 19, one step after the answer: eq. (5) writes y_s(t) into y(t+1),
    and y_s(19) carries the answer u(18) (Σ passes it on one step late)
    """
    t = g["t"]
    if g["lag"] == 1 and g["y_s_carries_answer"] and not g["y_s_at_answer_carries_answer"]:
        return (f"gate opens at t = {t}, one step after the answer: eq. (5) writes y_s(t) into "
                f"y(t+1),\nand y_s({t}) carries the answer u({answer}) (Σ passes it on one "
                "step late)")
    if g["lag"] == 0 and g["y_s_carries_answer"]:
        return (f"gate opens at the answer, t = {t}: eq. (5) writes y_s({t}), which carries "
                f"the answer, into y({t + 1})")
    return f"gate peak at t = {t} (s = {g['s']:.3g})"


def gate_figure(doc, arrays):
    """The Residual SSM's gate s(t) (eq. (5)) along the traced sequence, the trigger and
    answer positions marked and, for a task sequence, where the gate opens and why
    (``gate_opening``). ``doc``, ``arrays``: trace.json's and trace.npz's contents.
    Returns the matplotlib figure (the caller saves and closes it)."""
    plt = _plt()
    ctx = _ctx(doc)
    L = ctx["L"]
    s = onp.asarray(arrays["s"], float)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(range(L), s, "o-", color="tab:blue", ms=4, lw=1.5, zorder=3, label="gate s(t)")
    _sequence_axes(ax, ctx)
    g = doc.get("gate_opening") or gate_opening(doc, arrays)
    if g is not None:
        ax.plot([g["t"]], [g["s"]], "*", color="tab:purple", ms=14, zorder=4,
                label=gate_opening_text(g, ctx["answer"]))
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("gate s(t) = σ(r(t) + c)")
    what = (f"one {TASK_TITLES[ctx['task']]} sequence" if ctx["tag"] != "input"
            else "one input sequence")
    ax.set_title(f"Residual SSM: gate s(t) (eq. (5)) along {what}{_pred_text(ctx)}", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(ax, ncol=2 if g is not None else 3)
    fig.tight_layout()
    return fig


def residual_systems(P):
    """The two LTI systems of a Residual SSM's params, as the figures name them:
    ((name, TransferFunction, input label, output label), ...) for Σ and Σ_r."""
    if "sigma_num" in P:
        sigma, r_sys = (TransferFunction(P["sigma_num"], P["sigma_den"]),
                        TransferFunction(P["r_num"], P["r_den"]))
    else:
        sigma, r_sys = tuple(StateSpace(P[pre + "A"], P[pre + "B"], P[pre + "C"],
                                        P[pre + "D"]).to_tf() for pre in ("sigma_", "r_"))
    return (("Σ", sigma, "u_{j}", "y_{s,%d}"), ("Σ_r", r_sys, "(y_s - u)_{j}", "r"))


def lti_systems(P):
    """The LTI system of lti params, named by its sizes: 'LTI system (n states, m inputs,
    p outputs)' (n: the state dimension of its state space, or of the transfer matrix's
    realization, ``TransferFunction.order``).

    >>> lti_systems({"num": onp.ones((2, 1, 3)), "den": onp.array([[1, .5, 0], [1, 0, 0]])})[0][0]
    'LTI system (4 states, 1 input, 2 outputs)'
    """
    if "num" in P:
        given = TransferFunction(P["num"], P["den"])
        sys_ = given
    else:
        given = StateSpace(P["A"], P["B"], P["C"], P["D"])
        sys_ = given.to_tf()
    n, m, p = given.order, given.n_inputs, given.n_outputs

    def many(k, word):
        return f"{k} {word}" + ("" if k == 1 else "s")
    name = f"LTI system ({many(n, 'state')}, {many(m, 'input')}, {many(p, 'output')})"
    return ((name, sys_, "u_{j}", "y_%d"),)


def _channel(in_fmt, out_fmt, i, j):
    """Channel (i, j) of a transfer matrix as 'input j -> output i', numbered from 1.

    >>> print(_channel("u_{j}", "y_{s,%d}", 0, 1))
    $u_{2} \\to y_{s,1}$
    """
    inp = in_fmt.replace("{j}", "{%d}" % (j + 1))
    outp = out_fmt % (i + 1) if "%d" in out_fmt else out_fmt
    return f"${inp} \\to {outp}$"


def _zeros(sys_, i, j):
    b = onp.trim_zeros(sys_.num[i, j], "f")
    return onp.roots(b) if b.size > 1 else onp.zeros(0, complex)


def coincident(items, same):
    """Groups of ``items`` that ``same(a, b)`` says coincide: for each index, the other
    indices of its group (empty: it stands alone). Groups are joined transitively.

    >>> coincident([1.0, 2.0, 1.0, 3.0], lambda a, b: a == b)
    [[2], [], [0], []]
    """
    group = list(range(len(items)))
    for a in range(len(items)):
        for b in range(a + 1, len(items)):
            if group[b] == b and same(items[a], items[b]):
                group[b] = group[a]
    return [[b for b in range(len(items)) if b != a and group[b] == group[a]]
            for a in range(len(items))]


def _same_points(a, b, tol):
    """Two point sets (complex) equal within ``tol``: same size, each point near one of
    the other set."""
    if a.size != b.size or a.size == 0:
        return False
    d = onp.abs(a[:, None] - b[None, :])
    return bool(d.min(axis=1).max() <= tol and d.min(axis=0).max() <= tol)


def _coincide_note(names, others):
    """' (coincides with A, B)' for a legend label, or ''."""
    if not others:
        return ""
    return " (coincides with " + ", ".join(names[o] for o in others) + ")"


# distinct per channel: coincident channels stay visible as nested hollow markers and
# interleaved dashes
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = "osD^v<>ph"
COINCIDE = TOLERANCES["figure_coincide"]


def _marker_size(c, big=11.0):
    """Hollow markers shrinking per channel, so equal points show as concentric rings."""
    return max(3.5, big - 2.0 * (c % 4))


WINDOW_MAX = 1.6      # pole-zero plots show |z| <= 1.6 at most; zeros beyond are listed


def pole_zero_figure(systems):
    """One panel per system (``residual_systems``, ``lti_systems``): the unit circle, the
    poles (x) and each channel's zeros (its own colour, marker and size, so channels
    with the same zeros show as concentric rings; the legend says which coincide, within
    TOLERANCES["figure_coincide"] of the view), Re z / Im z axes sized to what is there.
    Returns the matplotlib figure (the caller saves and closes it)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(systems), figsize=(5.2 * len(systems), 5.6), squeeze=False)
    circle = onp.exp(1j * onp.linspace(0, 2 * onp.pi, 400))
    for ax, (name, sys_, in_fmt, out_fmt) in zip(axes[0], systems):
        ax.plot(circle.real, circle.imag, color="gray", lw=1, label="unit circle |z| = 1")
        ax.axhline(0, color="lightgray", lw=0.8, zorder=0)
        ax.axvline(0, color="lightgray", lw=0.8, zorder=0)
        pol = sys_.poles()
        ax.plot(pol.real, pol.imag, "x", color="black", ms=9, mew=2, label="poles", zorder=4)
        pts = [pol]
        chans = []
        for i in range(sys_.n_outputs):
            for j in range(sys_.n_inputs):
                zer = _zeros(sys_, i, j)
                chans.append((i, j, zer))
                pts.append(zer)
        allp = onp.concatenate(pts) if pts else onp.zeros(0)
        reach = float(onp.max(onp.abs(allp))) if allp.size else 1.0
        lim = min(max(1.15, 1.08 * reach), WINDOW_MAX)
        names = [_channel(in_fmt, out_fmt, i, j) for i, j, _ in chans]
        same = coincident([z for _, _, z in chans],
                          lambda a, b: _same_points(a, b, COINCIDE * 2 * lim))
        far = []
        for c, (i, j, zer) in enumerate(chans):
            near = zer[onp.abs(zer) <= lim]
            far += [abs(z) for z in zer[onp.abs(zer) > lim]]
            ax.plot(near.real, near.imag, MARKERS[c % len(MARKERS)], mfc="none", mew=1.5,
                    ms=_marker_size(c), color=f"C{c % 10}", zorder=3,
                    label=f"zeros of {names[c]}{_coincide_note(names, same[c])}")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel("Re z")
        ax.set_ylabel("Im z")
        far = sorted(far)
        note = ""
        if far:
            shown = ", ".join(f"{r:.3g}" for r in far[:4]) + (", ..." if len(far) > 4 else "")
            note = (f"\n{len(far)} zero{'s' if len(far) > 1 else ''} outside the view, "
                    f"at |z| = {shown}")
        ax.set_title(f"{name}: poles and zeros per channel{note}", fontsize=10)
        ax.grid(alpha=0.2)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12),
                  ncol=1 if any(same) else 2, frameon=False)   # long labels: one column
    fig.tight_layout()
    return fig


IMPULSE_MAX = 64      # impulse plots end where |h| has decayed below 1e-3 of its peak


def _impulse_length(sys_):
    """Samples worth showing: up to 4 past the last |h(t)| above 1e-3 max|h|, 8 to 64."""
    h = onp.abs(sys_.impulse(IMPULSE_MAX)).reshape(IMPULSE_MAX, -1).max(axis=1)
    big = onp.flatnonzero(h > 1e-3 * max(h.max(), 1e-300))
    return int(min(IMPULSE_MAX, max(8, (big[-1] if big.size else 0) + 5)))


def impulse_figure(systems):
    """One panel per system: h(t) of every channel until it has decayed, each channel its
    own line style and hollow marker size (coincident channels stay visible), the legend
    below saying which channels coincide (within TOLERANCES["figure_coincide"] of the
    panel's largest |h|). Returns the matplotlib figure (the caller saves and closes it)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(systems), figsize=(5.2 * len(systems), 4.4), squeeze=False)
    for ax, (name, sys_, in_fmt, out_fmt) in zip(axes[0], systems):
        n = _impulse_length(sys_)
        h = sys_.impulse(n)
        chans = [(i, j) for i in range(h.shape[1]) for j in range(h.shape[2])]
        names = [_channel(in_fmt, out_fmt, i, j) for i, j in chans]
        scale = max(float(onp.abs(h).max()), 1e-300)
        same = coincident([h[:, i, j] for i, j in chans],
                          lambda a, b: float(onp.abs(a - b).max()) <= COINCIDE * scale)
        for c, (i, j) in enumerate(chans):
            ax.plot(range(n), h[:, i, j], ls=LINESTYLES[c % len(LINESTYLES)],
                    marker=MARKERS[c % len(MARKERS)], mfc="none", ms=_marker_size(c, 9.0),
                    color=f"C{c % 10}", label=names[c] + _coincide_note(names, same[c]))
        ax.axhline(0, color="lightgray", lw=0.8, zorder=0)
        ax.set_title(f"{name}: impulse response per channel", fontsize=10)
        ax.set_xlabel("t (steps after a unit impulse at t = 0)")
        ax.set_ylabel("h(t)")
        ax.set_xticks(range(0, n, max(1, n // 8)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=1 if any(same) else 2, frameon=False, title="channel (input → output)",
                  title_fontsize=8)
    fig.tight_layout()
    return fig


def delta_figure(doc, arrays):
    """The Selective SSM's step size Δ_t (eq. (4a)) along the traced sequence: the mean
    over channels and the min..max band. Returns the matplotlib figure."""
    plt = _plt()
    ctx = _ctx(doc)
    L = ctx["L"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    d = onp.asarray(arrays["delta"], float)
    ax.fill_between(range(L), d.min(axis=1), d.max(axis=1), color="tab:blue", alpha=0.15,
                    lw=0, label="min..max over channels")
    ax.plot(range(L), d.mean(axis=1), "o-", ms=4, color="tab:blue", zorder=3,
            label="mean over channels")
    _sequence_axes(ax, ctx)
    ax.set_ylabel("step size Δ_t")
    what = (f"one {TASK_TITLES[ctx['task']]} sequence" if ctx["tag"] != "input"
            else "one input sequence")
    ax.set_title(f"Selective SSM: step size Δ_t (eq. (4a)) along {what}{_pred_text(ctx)}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(ax, ncol=4)
    fig.tight_layout()
    return fig
