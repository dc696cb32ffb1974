"""Training: Adam with linear warmup and cosine decay, global-norm clipping, checkpoints.

Everything goes through autograd and the cores' custom VJPs; no second framework.
Deterministic: the batch of step k is drawn from ``default_rng([seed, DATA_STREAM, k])``,
so a run resumed from a checkpoint at step k sees exactly the batches an uninterrupted
run would, and the same seed gives bit-identical parameters.

    lr(k)  = lr · (k+1)/warmup                                   k < warmup
           = lr · ½ (1 + cos(π (k − warmup)/(steps − warmup)))   otherwise
    g      ← g · min(1, clip / ‖g‖₂)        (global norm over all arrays)
    Adam   m ← β₁ m + (1−β₁) g;  v ← β₂ v + (1−β₂) g²;
           θ ← θ − lr(k) · m̂ / (√v̂ + ε),  m̂ = m/(1−β₁^{k+1}), v̂ = v/(1−β₂^{k+1})
    AdamW  (``weight_decay`` λ > 0) first θ ← θ · (1 − lr(k) λ) on the decayed arrays:
           all but those named in NO_DECAY (A_log, D, delta_bias, as mamba_ssm's
           ``_no_weight_decay``, and the biases b_out, c); decoupled from the gradient and
           from clipping, as torch.optim.AdamW. λ = 0 (the default): Adam, the same code.

Checkpoints are .npz files (loadable with allow_pickle=False): ``param/<name>``,
``adam_m/<name>``, ``adam_v/<name>``, ``step``, ``seed``, ``run_config_json`` (the run's
task, model options and recipe), written to a temporary name in the same directory and
renamed, so a crash never leaves half a file.

Glossary
--------
TrainConfig   steps, batch, L, lr, warmup, clip, seed, betas, eps, log_every, checkpoint_every,
              restarts, restart_steps, weight_decay
train(model_cfg, train_cfg, params=None, checkpoint=None, resume=False, progress=None,
      run_config=None) -> (params, history)

>>> from rssm_ref.training.head import ModelConfig
>>> cfg = ModelConfig("residual", "induction")
>>> p, hist = train(cfg, TrainConfig(steps=3, batch=8, warmup=1, seed=0))
>>> len(hist["loss"])
3
"""
import json
import os
import time
from dataclasses import dataclass

import numpy as onp
from autograd import value_and_grad
from autograd.extend import defvjp, primitive

from rssm_ref.training.head import accuracy, flat_loss, init_params, loss
from rssm_ref.util.alloc import keep_freed_memory
from rssm_ref.util.paths import atomic_savez
from rssm_ref.validation import check_number

__all__ = ["TrainConfig", "train", "lr_schedule", "clip_by_global_norm", "save_checkpoint",
           "load_checkpoint", "NO_DECAY"]

DATA_STREAM = 1
INIT_STREAM = 0
# parameters weight decay leaves alone: the state matrix, the skip and the Δ bias (as
# mamba_ssm marks A_log and D ``_no_weight_decay`` and keeps dt's bias out), and biases
NO_DECAY = ("A_log", "D", "delta_bias", "b_out", "c")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (the recipe is in docs/recipe.md)."""
    steps: int = 12000
    batch: int = 256
    L: int = 16
    lr: float = 0.02
    warmup: int = 200
    clip: float = 1.0
    seed: int = 0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    log_every: int = 50
    checkpoint_every: int = 1000
    restarts: int = 1
    restart_steps: int = 1000
    weight_decay: float = 0.0   # AdamW's decoupled λ (module docstring); 0: Adam

    @property
    def total_steps(self):
        """Steps run in all, discarded restart candidates included."""
        return self.steps + (max(1, self.restarts) - 1) * min(self.restart_steps, self.steps)

    def __post_init__(self):
        for name in ("steps", "batch", "L"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: {getattr(self, name)!r} (expected a positive integer)")
        if not self.lr > 0:
            raise ValueError(f"lr: {self.lr!r} (expected > 0)")
        object.__setattr__(self, "weight_decay", check_number("weight_decay", self.weight_decay))


def lr_schedule(k, cfg):
    """Learning rate at step k: linear warmup then cosine decay to 0.

    >>> c = TrainConfig(steps=10, warmup=2, lr=1.0)
    >>> [round(lr_schedule(k, c), 3) for k in (0, 1, 2, 9)]
    [0.5, 1.0, 1.0, 0.038]
    """
    if k < cfg.warmup:
        return cfg.lr * (k + 1) / cfg.warmup
    frac = (k - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return float(cfg.lr * 0.5 * (1.0 + onp.cos(onp.pi * frac)))


def clip_by_global_norm(grads, max_norm):
    """Scale every array by min(1, max_norm / ‖g‖₂); returns (grads, norm before).

    >>> g, n = clip_by_global_norm({"a": onp.array([3.0, 4.0])}, 1.0)
    >>> g["a"].tolist(), n
    ([0.6, 0.8], 5.0)
    """
    norm = float(onp.sqrt(sum(float(onp.sum(g * g)) for g in grads.values())))
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: g * scale for k, g in grads.items()}, norm



def save_checkpoint(path, params, adam_m, adam_v, step, seed, run_config=None):
    """Write a resumable checkpoint (see the module docstring for the keys), whole and with
    the usual file mode (0644 under umask 022).

    ``run_config``: a JSON-able dict of everything that decides the run (task, model
    options, recipe; rssm_ref.experiments.run_config), stored as the UTF-8 JSON uint8
    array ``run_config_json`` so that a resume can refuse another run's checkpoint. When
    """
    arrays = {"step": onp.array(step), "seed": onp.array(seed)}
    for prefix, tree in (("param", params), ("adam_m", adam_m), ("adam_v", adam_v)):
        for k, v in tree.items():
            arrays[f"{prefix}/{k}"] = onp.asarray(v, dtype=onp.float64)
    if run_config is not None:
        arrays["run_config_json"] = onp.frombuffer(
            json.dumps(run_config, sort_keys=True).encode("utf-8"), dtype=onp.uint8).copy()
    atomic_savez(os.fspath(path), arrays)


def load_checkpoint(path):
    """Read a checkpoint written by ``save_checkpoint`` (allow_pickle=False).

    Returns (params, adam_m, adam_v, step, seed); raises ValueError naming the file on
    a corrupt or foreign file.
    """
    try:
        with onp.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # truncated zip, not an npz, pickled arrays ...
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if "step" not in data or not any(k.startswith("param/") for k in data):
        raise ValueError(f"{path}: missing keys 'step' / 'param/*' (expected an rssm-ref checkpoint)")
    trees = {"param": {}, "adam_m": {}, "adam_v": {}}
    for k, v in data.items():
        prefix, _, name = k.partition("/")
        if prefix in trees:
            if v.dtype != onp.float64 or not onp.all(onp.isfinite(v)):
                raise ValueError(f"{path}: key {k!r} is not finite float64")
            trees[prefix][name] = v
    return trees["param"], trees["adam_m"], trees["adam_v"], int(data["step"]), int(data.get("seed", 0))


def fresh_state(params):
    params = {k: onp.array(v, dtype=onp.float64) for k, v in params.items()}
    return params, {k: onp.zeros_like(v) for k, v in params.items()}, {k: onp.zeros_like(v) for k, v in params.items()}


@primitive
def _part(theta, start, stop, shape):
    """theta[start:stop] reshaped: one parameter array read from the flat vector. A
    primitive so that autograd sees one cheap operation per array (its generic dict and
    slice bookkeeping cost more than the Residual SSM's whole gradient)."""
    return theta[start:stop].reshape(shape)


def _part_vjp(ans, theta, start, stop, shape):
    def vjp(g):
        out = onp.zeros(theta.shape)
        out[start:stop] = onp.ravel(g)
        return out
    return vjp


defvjp(_part, _part_vjp)


class FlatAdam:
    """Adam (AdamW with ``cfg.weight_decay``) on one flat vector whose slices are the
    parameter arrays (views), so an update is a dozen NumPy calls whatever the number of
    arrays. Per element the same formulas as the module docstring, in the same order.
    The loss is differentiated with respect to the flat vector itself (``value_and_grad``)."""

    def __init__(self, state, cfg):
        params, adam_m, adam_v = state
        self.names = list(params)
        self.shapes = [onp.shape(params[k]) for k in self.names]
        sizes = [int(onp.prod(shp, dtype=int)) for shp in self.shapes]
        self.bounds = list(zip(onp.cumsum([0] + sizes[:-1]).tolist(), onp.cumsum(sizes).tolist()))
        self.cfg = cfg
        self.theta = onp.concatenate([onp.ravel(params[k]) for k in self.names])
        self.m = onp.concatenate([onp.ravel(adam_m[k]) for k in self.names])
        self.v = onp.concatenate([onp.ravel(adam_v[k]) for k in self.names])
        self.params = self._views(self.theta)
        # 1 where weight decay acts, 0 on the arrays named in NO_DECAY
        self.decayed = onp.concatenate([onp.full(b - a, float(k not in NO_DECAY))
                                        for k, (a, b) in zip(self.names, self.bounds)])

    def _views(self, flat):
        return {k: flat[a:b].reshape(shp) for k, (a, b), shp in zip(self.names, self.bounds, self.shapes)}

    def layout(self):
        """((name, start, stop, shape), ...): where each array sits in theta."""
        return tuple((k, a, b, shp) for k, (a, b), shp in zip(self.names, self.bounds,
                                                                self.shapes))

    def unflatten(self, theta):
        """The params dict read from a (possibly traced) flat vector."""
        return {k: _part(theta, a, b, shp) for k, (a, b), shp in zip(self.names, self.bounds, self.shapes)}

    def step(self, g, k):
        """One clipped Adam step with the flat gradient g at schedule position k; returns
        the learning rate."""
        cfg = self.cfg
        g = onp.array(g, dtype=onp.float64)
        norm = float(onp.sqrt(onp.dot(g, g)))
        if norm > cfg.clip:                      # g <- g min(1, clip / ||g||)
            g *= cfg.clip / norm
        lr = lr_schedule(k, cfg)
        if cfg.weight_decay:
            # θ ← θ (1 − lr λ) on the decayed entries; × 1.0 (exact) on the others
            self.theta *= 1.0 - (lr * cfg.weight_decay) * self.decayed
        b1, b2 = cfg.beta1, cfg.beta2
        self.m *= b1
        self.m += (1 - b1) * g
        self.v *= b2
        self.v += (1 - b2) * (g * g)
        m_hat = self.m / (1 - b1 ** (k + 1))
        v_hat = self.v / (1 - b2 ** (k + 1))
        self.theta -= lr * m_hat / (onp.sqrt(v_hat) + cfg.eps)
        return lr

    def state(self):
        """(params, adam_m, adam_v) as dicts of fresh arrays."""
        copy = lambda flat: {k: onp.array(a) for k, a in self._views(flat).items()}
        return copy(self.theta), copy(self.m), copy(self.v)


def train(model_cfg, cfg, params=None, checkpoint=None, resume=False, progress=None,
          run_config=None):
    """Train ``model_cfg`` on its task at length cfg.L; returns (params, history).

    Seeded restarts (``cfg.restarts`` > 1, and no ``params`` given): candidate r starts
    from ``init_params(seed)`` (r = 0) or ``init_params([seed, r])``, trains the first
    ``restart_steps`` steps of the schedule on the same batches, and the candidate with
    the lowest mean loss over its last 100 steps continues to ``cfg.steps``. This
    escapes the bad basins met with m = 2 (two tokens' embeddings merged, or the gate
    opening one step late) at a fixed, deterministic cost.

    ``progress(step, info)`` is called every ``log_every`` steps with
    info = {"loss", "acc", "steps_per_s", "lr"}; ``step`` counts all steps run, restarts
    included (up to ``cfg.total_steps``). ``checkpoint``: path written every
    ``checkpoint_every`` steps and at the end; with ``resume`` an existing checkpoint
    there is continued from its step. ``run_config``: a JSON-able dict of what decides the
    run (``rssm_ref.experiments.reproduce.run_config``), stored in every checkpoint.
    """
    keep_freed_memory()
    offset = [0]          # steps already run by discarded restart candidates
    t0 = time.perf_counter()

    def run(state, start, stop, history, save):
        opt = FlatAdam(state, cfg)
        # one primitive for the whole loss of theta where the model has one, else the
        # loss composed on the params read from theta (the same numbers, bit for bit)
        vg = value_and_grad(flat_loss(model_cfg, opt.layout(), cfg.L) or (
            lambda theta, tokens, targets: loss(model_cfg, opt.unflatten(theta), tokens,
                                                targets)))
        window_loss, window_n = 0.0, 0
        for k in range(start, stop):
            rng = onp.random.default_rng([cfg.seed, DATA_STREAM, k])
            tokens, targets = model_cfg.batch(rng, cfg.batch, cfg.L)
            value, grad_theta = vg(opt.theta, tokens, targets)
            lr = opt.step(grad_theta, k)
            history["step"].append(k)
            history["loss"].append(float(value))
            history["lr"].append(float(lr))
            window_loss += float(value)
            window_n += 1
            done = k + 1
            if progress is not None and (done % cfg.log_every == 0 or done == stop):
                acc = accuracy(model_cfg, opt.params, tokens, targets)
                elapsed = time.perf_counter() - t0
                shown = offset[0] + done
                progress(shown, {"loss": window_loss / window_n, "acc": acc, "lr": lr,
                                 "steps_per_s": (shown - first[0]) / max(elapsed, 1e-9)})
                window_loss, window_n = 0.0, 0
            if save and checkpoint and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                save_checkpoint(checkpoint, *opt.state(), done, cfg.seed, run_config)
        return opt.state(), history

    first = [0]
    start = 0
    history = {"step": [], "loss": [], "lr": []}
    if resume and checkpoint and os.path.exists(checkpoint):
        params, adam_m, adam_v, start, seed = load_checkpoint(checkpoint)
        if seed != cfg.seed:
            raise ValueError(f"{checkpoint}: written with seed {seed}, asked to resume with seed {cfg.seed}")
        state = (params, adam_m, adam_v)
        offset[0] = (cfg.restarts - 1) * min(cfg.restart_steps, cfg.steps) if start >= cfg.restart_steps else 0
        first[0] = offset[0] + start
    elif params is not None or cfg.restarts <= 1:
        state = fresh_state(params if params is not None else init_params(model_cfg, seed=cfg.seed))
    else:
        short = min(cfg.restart_steps, cfg.steps)
        best = None
        for r in range(cfg.restarts):
            cand = fresh_state(init_params(model_cfg, seed=cfg.seed if r == 0 else [cfg.seed, r]))
            cand, hist = run(cand, 0, short, {"step": [], "loss": [], "lr": []}, save=False)
            score = float(onp.mean(hist["loss"][-100:]))
            if best is None or score < best[0]:
                best = (score, cand, hist, r)
            offset[0] += short
        offset[0] -= short            # the winner's steps count once
        _, state, history, winner = best
        history["restart_winner"] = winner
        start = short
    state, history = run(state, start, cfg.steps, history, save=True)
    return state[0], history
