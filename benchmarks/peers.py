"""Peers in the bench: the bench's training and evaluation workloads written by hand in
JAX (``jit``) and PyTorch (eager), checked against rssm-ref, then timed (docs/bench.md).

JAX and PyTorch are optional comparison peers, never dependencies: ``pip install
'.[peers]'`` brings both (CPU builds suffice). Nothing imports this module except
``rssm_ref.app.bench`` (``bench --peers``), and this module imports a framework only inside
:func:`available` and :func:`peer_rows`. A framework that does not import is left out, and
:func:`available` says why.

Workloads (float64 everywhere; with ``quick``: batch / 4, L 1024 -> 256, 2 repeats):

    residual_train_step   one step of ``rssm_ref.training.train``: its batch (``tasks.make_batch``),
                          loss, gradient, global-norm clip, Adam; batch 256, L 16
    residual_loss_grad    ``models.loss`` of the Residual SSM and its gradient; same sizes
    residual_loss         the same loss, forward only
    selective_loss_grad   ``models.loss`` of the Selective SSM and its gradient; batch 64,
                          L 16, m 16, n 8
    residual_eval_L1024   y(L) of the Residual SSM (``models.final_output``); 1000 x 1024
    lti_siso              an order-4 SISO transfer function (``recurrence.tf_filter``);
                          1000 x 1024

Each peer is written from the paper's equations, not by calling rssm-ref: den = the
step-up recursion of b tanh(θ) (``lti.den_from_theta``, b the reflection bound); the
Markov kernel h of num(z)/den(z) by a lower-triangular Toeplitz solve T_den h = num;
y_s = Σ(u) and r = Σ_r(y_s − u) (Fig. 3) as causal convolutions by h (one Toeplitz
matmul at L = 16); the gate s = σ(g (r + c)) (g the gate gain, c the learned bias if the
configuration has one, else 0) and eq. (5) (or Remark 3.1's ZOH gate) unrolled down to
y(L); the readout (tied cosine SCALE cos(E_k, y(L)) over the first N rows of E, or linear
W_out y(L) + b_out); cross-entropy on the last position. At L = 1024 JAX runs the
difference equations (transposed direct form II; Σ, Σ_r and the gate stepped together)
under ``lax.scan``; PyTorch, where a Python loop over time costs 3-5x more, convolves
with the exact kernels by FFTs of length 2 L. The Selective SSM follows eqs. (2)-(4):
Δ = softplus(W_Δ u + b_Δ), A = −exp(A_log), ZOH B_t = expm1(Δ A)/A · B̄ (or Euler Δ B̄),
h(t+1) = A_t h(t) + B_t u(t) unrolled to the state that is read ("before" or "after"
the update) with one exponential of a reversed cumulative sum of Δ.
Constants and options are read at run time from ``rssm_ref.training.head`` and the
``ModelConfig`` (``_constants``), and ``init_params``' keys are checked against the
ones the peers know.

Before anything is timed, each peer runs on the inputs rssm-ref gets and its outputs (loss
and every gradient array; for the training step the losses of three steps and the
parameter change they make, against ``train.train``) are compared with rssm-ref's:
``rel_err`` (``rssm_ref.tolerances``) above ``TOLERANCES["peer_agreement"]`` raises
AssertionError naming the workload, the framework and the array.

Glossary
--------
FRAMEWORKS   ("jax-jit", "torch-eager");  WORKLOADS  the six workload names above
shapes: tokens (batch, L) int, targets (batch,) int, params dict name -> array (as
``models.init_params``), y(L) (batch, m), u (batch, L) for lti_siso
available() -> {framework: (importable: bool, reason: str)}
peer_rows(quick=False, repeats=7) -> [row], one per (workload, framework):
    {"figure": "peer_<workload>", "framework", "value": seconds (best of ``repeats``
     after a warm-up / compile call), "unit": "s", "baseline": None, "target": "report",
     "pass": None, "detail": {sizes..., "max_rel_err_vs_rssm_ref", "compile_s" (the first
     call: JAX's trace + compile + run, PyTorch's warm-up), "rssm_ref_s" (rssm-ref on the
     same inputs, timed the same way), "threads", "version", "method" (L 1024 rows)}}
Settings are restored afterwards (PyTorch's thread count and default dtype); JAX's
``jax_enable_x64`` is switched on for the process and stays on.

>>> sorted(available())
['jax-jit', 'torch-eager']
>>> all(isinstance(ok, bool) and isinstance(why, str) for ok, why in available().values())
True
"""
import importlib
import os
import time

import numpy as onp

__all__ = ["available", "peer_rows", "FRAMEWORKS", "WORKLOADS"]

FRAMEWORKS = ("jax-jit", "torch-eager")
WORKLOADS = ("residual_train_step", "residual_loss_grad", "residual_loss", "selective_loss_grad",
             "residual_eval_L1024", "lti_siso")
_MODULES = {"jax-jit": "jax", "torch-eager": "torch"}
INSTALL_HINT = "pip install '.[peers]'"
SEED = 0
RESIDUAL_KEYS = ("E", "sigma_num", "sigma_theta", "r_num", "r_theta")   # + "c" (gate bias)
SELECTIVE_KEYS = ("E", "A_log", "W_delta", "delta_bias", "W_B", "W_C")  # + "conv" (window)
OPTIONAL_KEYS = ("W_out", "b_out")                                          # linear readout
CHECK_STEPS = 3          # training steps compared with train.train before timing


def _threads():
    """PyTorch's threads: rssm-ref's own count (``rssm_ref.util.threads.workers``):
    $RSSM_REF_THREADS when set (1 steadies PyTorch's timings on a busy machine), else
    min(2, cores available)."""
    from rssm_ref.util.threads import workers
    return workers()


# ------------------------------------------------------------------ availability
def _import(name):
    return importlib.import_module(name)


def available():
    """{framework: (importable, reason)} for "jax-jit" and "torch-eager".

    The reason names the version when the framework imports, else the exception and the
    install command, e.g. "jax not importable: ModuleNotFoundError: No module named
    'jax'; pip install '.[peers]'".

    >>> ok, why = available()["jax-jit"]
    >>> why.startswith("jax")
    True
    """
    out = {}
    for fw in FRAMEWORKS:
        name = _MODULES[fw]
        try:
            mod = _import(name)
            if name == "jax":
                _import("jax.numpy")
            out[fw] = (True, f"{name} {getattr(mod, '__version__', '(version unknown)')}")
        except Exception as exc:    # not installed, or an install that fails to load
            out[fw] = (False, f"{name} not importable: {type(exc).__name__}: {exc}; {INSTALL_HINT}")
    return out


# ------------------------------------------------------------------ the framework adapters
class _Jax:
    """The few array operations the shared model code needs, in JAX (float64)."""
    name = "jax-jit"
    long_method = "scan"        # L 1024: the difference equations under lax.scan

    def __init__(self):
        jax = _import("jax")
        jax.config.update("jax_enable_x64", True)
        self.jax = jax
        self.np = _import("jax.numpy")
        self.lax = _import("jax.lax")
        self.version = f"jax {jax.__version__}"
        try:
            self.threads = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.threads = os.cpu_count() or 1

    def enter(self):
        pass

    def restore(self):
        pass

    def asarray(self, x):
        x = onp.asarray(x)
        return self.np.asarray(x, dtype=self.np.float64 if x.dtype.kind == "f" else x.dtype)

    def to_numpy(self, x):
        return onp.asarray(x)

    def sync(self, out):
        return self.jax.block_until_ready(out)

    def cat(self, xs, axis=-1):
        return self.np.concatenate(xs, axis=axis)

    def flip(self, x, axis):
        return self.np.flip(x, axis=axis)

    def zeros(self, shape):
        return self.np.zeros(shape, dtype=self.np.float64)

    def ones(self, shape):
        return self.np.ones(shape, dtype=self.np.float64)

    def cumprod(self, x, axis):
        return self.np.cumprod(x, axis=axis)

    def cumsum(self, x, axis):
        return self.np.cumsum(x, axis=axis)

    def amax(self, x, axis):
        return self.np.max(x, axis=axis, keepdims=True)

    def sum(self, x, axis=None, keepdims=False):
        return self.np.sum(x, axis=axis, keepdims=keepdims)

    def moveaxis(self, x, a, b):
        return self.np.moveaxis(x, a, b)

    def transpose(self, x, axes):
        return self.np.transpose(x, axes)

    def solve_lower(self, T, B):
        """X with T X = B, T (..., L, L) lower triangular, B (..., L, k)."""
        return self.lax.linalg.triangular_solve(T, B, left_side=True, lower=True)

    def softplus(self, x):
        return self.np.logaddexp(0.0, x)

    def rfft(self, x, n, axis):
        return self.np.fft.rfft(x, n, axis)

    def irfft(self, X, n, axis):
        return self.np.fft.irfft(X, n, axis)

    def scan(self, step, carry, xs):
        """carry <- step(carry, x) for x along axis 0 of each array in the tuple xs."""
        return self.lax.scan(lambda c, x: (step(c, x), None), carry, xs)[0]

    def __getattr__(self, name):          # tanh, exp, expm1, log, sqrt, einsum, ...
        if name.startswith("_") or name in ("np", "jax", "lax"):
            raise AttributeError(name)
        return getattr(self.np, name)

    # -- compiling and differentiating
    def compile(self, fn):
        return self.jax.jit(fn)

    def value_and_grad(self, loss_fn):
        """fn(params, *args) -> (loss, {name: gradient}), compiled."""
        return self.jax.jit(self.jax.value_and_grad(loss_fn))

    def train_step(self, loss_fn, hyper):
        """One step of rssm_ref.training.train on (params, m, v) dicts: loss, gradient, global-norm
        clip, Adam; returns (params, m, v, loss), compiled (lr and the bias corrections are
        arguments, so one compilation serves every step)."""
        np = self.np
        b1, b2, eps, clip = hyper["beta1"], hyper["beta2"], hyper["eps"], hyper["clip"]
        vg = self.jax.value_and_grad(loss_fn)

        def step(params, m, v, tokens, targets, lr, bc1, bc2):
            value, g = vg(params, tokens, targets)
            norm = np.sqrt(sum(np.sum(gi * gi) for gi in g.values()))
            scale = np.where(norm > clip, clip / norm, 1.0)        # g <- g min(1, clip/|g|)
            new_p, new_m, new_v = {}, {}, {}
            for k in params:
                gk = g[k] * scale
                new_m[k] = b1 * m[k] + (1 - b1) * gk
                new_v[k] = b2 * v[k] + (1 - b2) * (gk * gk)
                new_p[k] = params[k] - lr * (new_m[k] / bc1) / (np.sqrt(new_v[k] / bc2) + eps)
            return new_p, new_m, new_v, value
        return self.jax.jit(step)

    def no_grad(self):
        return _Null()


class _Torch:
    """The same operations in PyTorch eager mode (float64, ``_threads()`` threads)."""
    name = "torch-eager"
    long_method = "fft"         # L 1024: a Python loop over time costs 3-10x more in eager mode

    def __init__(self):
        torch = _import("torch")
        self.torch = torch
        self.version = f"torch {torch.__version__}"
        self.threads = _threads()
        self._saved = None

    def enter(self):
        """float64 by default and ``_threads()`` threads, until :meth:`restore`."""
        torch = self.torch
        if self._saved is None:
            self._saved = (torch.get_num_threads(), torch.get_default_dtype())
        torch.set_num_threads(_threads())
        torch.set_default_dtype(torch.float64)
        self.threads = torch.get_num_threads()

    def restore(self):
        if self._saved is not None:
            self.torch.set_num_threads(self._saved[0])
            self.torch.set_default_dtype(self._saved[1])
            self._saved = None

    def asarray(self, x):
        x = onp.asarray(x)
        if x.dtype.kind == "f":
            return self.torch.as_tensor(x, dtype=self.torch.float64)
        return self.torch.as_tensor(x, dtype=self.torch.int64)

    def to_numpy(self, x):
        return x.detach().numpy()

    def sync(self, out):
        return out

    def cat(self, xs, axis=-1):
        return self.torch.cat(xs, dim=axis)

    def flip(self, x, axis):
        return self.torch.flip(x, dims=(axis,))

    def zeros(self, shape):
        return self.torch.zeros(shape, dtype=self.torch.float64)

    def ones(self, shape):
        return self.torch.ones(shape, dtype=self.torch.float64)

    def cumprod(self, x, axis):
        return self.torch.cumprod(x, dim=axis)

    def cumsum(self, x, axis):
        return self.torch.cumsum(x, dim=axis)

    def amax(self, x, axis):
        return self.torch.amax(x, dim=axis, keepdim=True)

    def sum(self, x, axis=None, keepdims=False):
        return self.torch.sum(x) if axis is None else self.torch.sum(x, dim=axis, keepdim=keepdims)

    def moveaxis(self, x, a, b):
        return self.torch.movedim(x, a, b)

    def transpose(self, x, axes):
        return self.torch.permute(x, axes)

    def solve_lower(self, T, B):
        return self.torch.linalg.solve_triangular(T, B, upper=False)

    def softplus(self, x):
        # not torch.nn.functional.softplus: its threshold (x > 20 -> x) is off by e^-20
        return self.torch.logaddexp(self.torch.zeros_like(x), x)

    def rfft(self, x, n, axis):
        return self.torch.fft.rfft(x, n=n, dim=axis)

    def irfft(self, X, n, axis):
        return self.torch.fft.irfft(X, n=n, dim=axis)

    def scan(self, step, carry, xs):
        for t in range(xs[0].shape[0]):
            carry = step(carry, tuple(x[t] for x in xs))
        return carry

    def __getattr__(self, name):
        if name.startswith("_") or name == "torch":
            raise AttributeError(name)
        return getattr(self.torch, name)

    def compile(self, fn):
        return fn

    def value_and_grad(self, loss_fn):
        torch = self.torch

        def vg(params, *args):
            leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
            value = loss_fn(leaves, *args)
            grads = torch.autograd.grad(value, list(leaves.values()))
            return value.detach(), dict(zip(leaves, grads))
        return vg

    def train_step(self, loss_fn, hyper):
        torch = self.torch
        b1, b2, eps, clip = hyper["beta1"], hyper["beta2"], hyper["eps"], hyper["clip"]
        vg = self.value_and_grad(loss_fn)

        def step(params, m, v, tokens, targets, lr, bc1, bc2):
            value, g = vg(params, tokens, targets)
            with torch.no_grad():
                norm = float(torch.sqrt(sum(torch.sum(gi * gi) for gi in g.values())))
                scale = clip / norm if norm > clip else 1.0
                new_p, new_m, new_v = {}, {}, {}
                for k in params:
                    gk = g[k] * scale
                    new_m[k] = b1 * m[k] + (1 - b1) * gk
                    new_v[k] = b2 * v[k] + (1 - b2) * (gk * gk)
                    step_k = (new_m[k] / bc1) / (torch.sqrt(new_v[k] / bc2) + eps)
                    new_p[k] = params[k] - lr * step_k
            return new_p, new_m, new_v, value
        return step

    def no_grad(self):
        return self.torch.no_grad()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_ADAPTERS = {"jax-jit": _Jax, "torch-eager": _Torch}


# ------------------------------------------------------------------ the models, once for both
def _constants(cfg):
    """The model's constants and options, read from rssm_ref.training.head and ``cfg`` at run
    time: the readout scale, the gate gain g of s = σ(g (r + c)), the reflection bound b
    of k = b tanh(θ), the readout kind. A configuration without an option has the older
    module constant (``models.GAIN``, ``models.REFLECTION_SCALE``) or the paper's value."""
    from rssm_ref.training import head as models
    return {"SCALE": float(getattr(models, "SCALE", 10.0)),
            "GAIN": float(getattr(cfg, "gate_gain", getattr(models, "GAIN", 1.0))),
            "BOUND": float(getattr(cfg, "reflection_bound",
                                   getattr(models, "REFLECTION_SCALE", 1.0))),
            "readout": getattr(cfg, "readout", "cosine")}


def _den(o, theta, bound):
    """Step-up recursion of k = bound tanh(θ): θ (..., n) -> monic den (..., n+1)."""
    k = bound * o.tanh(theta)
    a = o.ones(tuple(theta.shape[:-1]) + (1,))
    zero = o.zeros(tuple(theta.shape[:-1]) + (1,))
    for i in range(theta.shape[-1]):
        # a^(i+1) = [a, 0] + k_i [0, reverse(a)]
        a = o.cat([a, zero]) + k[..., i:i + 1] * o.cat([zero, o.flip(a, -1)])
    return a


def _toeplitz_index(L):
    t = onp.arange(L)
    lag = t[:, None] - t[None, :]
    return onp.maximum(lag, 0), (lag >= 0).astype(float)


def _toeplitz(o, h, idx, mask):
    """T[..., t, τ] = h[..., t − τ] for t >= τ, else 0: h (..., L) -> (..., L, L);
    idx, mask from :func:`_toeplitz_index` (as the framework's arrays)."""
    return h[..., idx] * mask


def _pad(o, a, L):
    k = a.shape[-1]
    return a[..., :L] if k >= L else o.cat([a, o.zeros(tuple(a.shape[:-1]) + (L - k,))])


def _kernel(o, num, den, L, idx, mask):
    """The first L Markov parameters h (p, m, L) of num (p, m, k) / den (p, k):
    T_a h = b with T_a the lower-triangular Toeplitz matrix of a (the difference equation
    run on an impulse)."""
    Ta = _toeplitz(o, _pad(o, den, L), idx, mask)                        # (p, L, L)
    h = o.solve_lower(Ta, o.moveaxis(_pad(o, num, L), -1, -2))           # (p, L, m)
    return o.moveaxis(h, -1, -2)


def _conv(o, h, x, idx, mask):
    """Causal convolution y[b, t, i] = sum_j sum_{τ<=t} h[i, j, t − τ] x[b, τ, j]:
    h (p, m, L), x (batch, L, m) -> (batch, L, p), as one matmul by the block-Toeplitz
    matrix W[(i, t), (j, τ)] (p L, m L) (PyTorch's einsum of the 4-D form is 5x slower)."""
    p, m, L = h.shape
    W = o.transpose(_toeplitz(o, h, idx, mask), (0, 2, 1, 3)).reshape(p * L, m * L)
    X = o.transpose(x, (0, 2, 1)).reshape(x.shape[0], m * L)              # (batch, m L)
    return o.transpose((X @ W.T).reshape(x.shape[0], p, L), (0, 2, 1))


def _gate_b(o, s, gate):
    return s if gate == "euler" else -o.expm1(-s)          # eq. (5) / Remark 3.1


def _gate_final(o, y_s, s, gate):
    """y(L) of y(t+1) = (1 − b(t)) y(t) + b(t) y_s(t), y(0) = 0, unrolled:
    y(L) = sum_t b(t) prod_{k>t} (1 − b(k)) y_s(t)."""
    b = _gate_b(o, s, gate)
    a = 1.0 - b
    suffix = o.flip(o.cumprod(o.flip(a[:, 1:], 1), 1), 1)                 # prod_{k>t} a(k)
    w = b * o.cat([suffix, o.ones((a.shape[0], 1))], 1)
    return o.einsum("bt,btm->bm", w, y_s)


def _sigmoid(o, x):
    return 0.5 * (o.tanh(0.5 * x) + 1.0)


def _residual_arrays(o, params, K):
    """(sigma_num, sigma_den, r_num, r_den, c) with the gain folded in, as
    models.residual_core_arrays (no learned bias "c": c = 0)."""
    sden = _den(o, params["sigma_theta"], K["BOUND"])
    rden = _den(o, params["r_theta"], K["BOUND"])
    c = params["c"] if "c" in params else 0.0
    return params["sigma_num"], sden, K["GAIN"] * params["r_num"], rden, K["GAIN"] * c


def _residual_final_kernel(o, params, tokens, K, gate, idx, mask):
    """y(L) (batch, m) of the Residual SSM by Markov kernels (training lengths)."""
    snum, sden, rnum, rden, c = _residual_arrays(o, params, K)
    u = params["E"][tokens]                                                # (batch, L, m)
    L = u.shape[1]
    y_s = _conv(o, _kernel(o, snum, sden, L, idx, mask), u, idx, mask)     # y_s = Σ(u)
    r = _conv(o, _kernel(o, rnum, rden, L, idx, mask), y_s - u, idx, mask)[:, :, 0]
    return _gate_final(o, y_s, _sigmoid(o, r + c), gate)


def _residual_final_scan(o, params, tokens, K, gate):
    """y(L) of the Residual SSM by its difference equations, transposed direct form II,
    Σ, Σ_r and the gate stepped together (long sequences)."""
    snum, sden, rnum, rden, c = _residual_arrays(o, params, K)
    u = o.moveaxis(params["E"][tokens], 1, 0)                              # (L, batch, m)
    batch, m = u.shape[1], u.shape[2]
    b0, b1, a1 = snum[:, :, 0], snum[:, :, 1:], sden[:, 1:]       # Σ: (m, m), (m, m, ν), (m, ν)
    rb0, rb1, ra1 = rnum[0, :, 0], rnum[0, :, 1:], rden[0, 1:]    # Σ_r: (m,), (m, ν_r), (ν_r,)

    def shift(z):
        return o.cat([z[..., 1:], o.zeros(tuple(z.shape[:-1]) + (1,))])

    def step(carry, x):
        zs, zr, y = carry
        u_t = x[0]
        ys = o.einsum("bj,ij->bi", u_t, b0) + zs[:, :, 0]                 # y_s(t)
        zs = o.einsum("bj,ijn->bin", u_t, b1) - ys[:, :, None] * a1 + shift(zs)
        e = ys - u_t
        r = o.einsum("bj,j->b", e, rb0) + zr[:, 0]                        # r(t)
        zr = o.einsum("bj,jn->bn", e, rb1) - r[:, None] * ra1 + shift(zr)
        bt = _gate_b(o, _sigmoid(o, r + c), gate)[:, None]
        return zs, zr, (1.0 - bt) * y + bt * ys                            # eq. (5)

    init = (o.zeros((batch, m, b1.shape[-1])), o.zeros((batch, rb1.shape[-1])), o.zeros((batch, m)))
    return o.scan(step, init, (u,))[2]


def _fft_conv(o, h, x):
    """The causal convolution of :func:`_conv` by FFTs of length 2 L (no wrap-around; the
    kernel holds all L Markov parameters the first L outputs need, so nothing is
    truncated): h (p, m, L), x (batch, m, L) channel-major -> (batch, p, L)."""
    L = x.shape[-1]
    X = o.rfft(x, 2 * L, -1)                                               # (batch, m, L+1)
    H = o.rfft(h, 2 * L, -1)                                               # (p, m, L+1)
    Y = o.sum(X[:, None, :, :] * H[None], 2)                               # (batch, p, L+1)
    return o.irfft(Y, 2 * L, -1)[..., :L]


def _residual_final_fft(o, params, tokens, K, gate):
    """y(L) of the Residual SSM by exact Markov kernels (Toeplitz solves) and FFT
    convolutions, then the unrolled gate (long sequences, eager frameworks)."""
    snum, sden, rnum, rden, c = _residual_arrays(o, params, K)
    u = o.moveaxis(params["E"][tokens], 1, 2)                              # (batch, m, L)
    L = u.shape[-1]
    idx, mask = (o.asarray(a) for a in _toeplitz_index(L))
    y_s = _fft_conv(o, _kernel(o, snum, sden, L, idx, mask), u)           # y_s = Σ(u)
    r = _fft_conv(o, _kernel(o, rnum, rden, L, idx, mask), y_s - u)[:, 0]  # r = Σ_r(y_s − u)
    return _gate_final(o, o.moveaxis(y_s, 1, 2), _sigmoid(o, r + c), gate)


def _lti_fft(o, num, den, u):
    """y = lfilter(num, den, u) along axis 1 of u (batch, L): the exact kernel by a
    Toeplitz solve, then one FFT convolution."""
    L = u.shape[1]
    idx, mask = (o.asarray(a) for a in _toeplitz_index(L))
    h = _kernel(o, num[None, None, :], den[None, :], L, idx, mask)        # (1, 1, L)
    return _fft_conv(o, h, u[:, None, :])[:, 0]


def _readout_ce(o, y, params, targets, n_rows, K):
    """mean_b −log softmax(z_b)[target_b] with the readout z = SCALE cos(E_k, y_b) over the
    first n_rows rows of E ("cosine"), or z = W_out y_b + b_out ("linear")."""
    if K["readout"] == "linear":
        z = o.einsum("bm,km->bk", y, params["W_out"]) + params["b_out"]
    else:
        E = params["E"][:n_rows]
        yh = y / o.sqrt(o.sum(y * y, 1, True) + 1e-12)
        Eh = E / o.sqrt(o.sum(E * E, 1, True) + 1e-12)
        z = K["SCALE"] * o.einsum("bm,km->bk", yh, Eh)
    zmax = o.amax(z, 1)
    lse = zmax[:, 0] + o.log(o.sum(o.exp(z - zmax), 1))
    picked = o.sum(z * (targets[:, None] == o.arange(n_rows)[None, :]), 1)
    return o.sum(lse - picked) / z.shape[0]


def _selective_final(o, params, tokens, cfg):
    """y (batch, m) read at the last position, eqs. (2)-(4), with the scan (2) unrolled:

        h^i(T) = sum_{t<T} exp(A^i S_t^i) B_t^i u_i(t),   S_t^i = sum_{t<k<T} Δ_k^i

    (the product of the A_k of (3a) is one exponential of a reversed cumulative sum;
    T = L − 1 for output "before", L for "after"). 2-3x faster than stepping over time in
    both frameworks (JAX: 3.6 vs 11.5 ms at batch 64 on a busy machine)."""
    u = params["E"][tokens]                                                # (batch, L, m)
    L = u.shape[1]
    sel = u                         # what the selection reads: u(t) (the paper), or a window
    if "conv" in params:            # v(t) = sum_{k<w} conv[k] ⊙ u(t − k), zero before t = 0
        K = params["conv"]                                                 # (w, m)
        sel = K[0] * u
        for k in range(1, min(K.shape[0], L)):
            sel = sel + K[k] * o.cat([o.zeros((u.shape[0], k, u.shape[2])), u[:, :L - k]], 1)
    delta = o.softplus(o.einsum("blj,ij->bli", sel, params["W_delta"]) + params["delta_bias"])
    B_bar = o.einsum("blj,nj->bln", sel, params["W_B"])                    # (4b)
    C_bar = o.einsum("blj,nj->bln", sel, params["W_C"])                    # (4c)
    A = -o.exp(params["A_log"])                                            # (m, n) < 0
    T = L - 1 if cfg.output == "before" else L                             # read h(L-1) or h(L)
    if T == 0:
        return o.zeros((u.shape[0], u.shape[2]))
    d = delta[:, :T]                                                       # (batch, T, m)
    R = o.flip(o.cumsum(o.flip(d, 1), 1), 1)                               # sum_{t<=k<T} Δ_k
    S = o.cat([R[:, 1:], o.zeros((d.shape[0], 1, d.shape[2]))], 1)         # sum_{t<k<T} Δ_k
    decay = o.exp(S[..., None] * A)                                        # prod of (3a)
    if cfg.discretization == "zoh":
        gain = o.expm1(d[..., None] * A) / A                               # (3b) A^-1 (e^{ΔA} − 1)
    else:
        gain = d[..., None]                                                # Euler: Δ
    x = B_bar[:, :T, None, :] * u[:, :T, :, None]                          # B̄_t u_i(t)
    h = o.sum(decay * gain * x, 1)                                         # (batch, m, n)
    return o.einsum("bin,bn->bi", h, C_bar[:, L - 1])


def _loss_fn(o, cfg, K, idx, mask):
    """The peer of models.loss(cfg, ·): fn(params, tokens, targets) -> scalar."""
    if cfg.model == "residual":
        def fn(params, tokens, targets):
            y = _residual_final_kernel(o, params, tokens, K, cfg.gate, idx, mask)
            return _readout_ce(o, y, params, targets, cfg.n_tokens, K)
    else:
        def fn(params, tokens, targets):
            y = _selective_final(o, params, tokens, cfg)
            return _readout_ce(o, y, params, targets, cfg.n_tokens, K)
    return fn


def _lti_scan(o, num, den, u):
    """y = lfilter(num, den, u) along axis 1 of u (batch, L), TDF-II, den[0] = 1."""
    b0, b1, a1 = num[0], num[1:], den[1:]

    def step(z, x):
        y_prev, zz = z
        y = b0 * x[0] + zz[:, 0]
        zz = x[0][:, None] * b1 - y[:, None] * a1 + o.cat([zz[:, 1:], o.zeros((zz.shape[0], 1))])
        return y, zz
    # the outputs are collected by carrying them: a loop in PyTorch, a scan in JAX
    return _collect(o, step, (o.zeros((u.shape[0],)), o.zeros((u.shape[0], b1.shape[0]))), u)


def _collect(o, step, carry, u):
    if isinstance(o, _Jax):
        def f(c, x):
            c = step(c, (x,))
            return c, c[0]
        return o.moveaxis(o.lax.scan(f, carry, o.moveaxis(u, 1, 0))[1], 0, 1)
    ys = []
    for t in range(u.shape[1]):
        carry = step(carry, (u[:, t],))
        ys.append(carry[0])
    return o.stack(ys, 1)


# ------------------------------------------------------------------ checks and timing
def _peer_tol():
    from rssm_ref.tolerances import TOLERANCES
    return TOLERANCES["peer_agreement"]


def _agree(pairs, what):
    """max rel_err over {name: (peer, rssm_ref)}; AssertionError above the tolerance."""
    from rssm_ref.tolerances import rel_err
    errs = {k: rel_err(onp.asarray(a, dtype=float), onp.asarray(b, dtype=float))
            for k, (a, b) in pairs.items()}
    worst = max(errs, key=errs.get)
    tol = _peer_tol()
    if not errs[worst] <= tol:
        raise AssertionError(f"{what}: max_rel_err_vs_rssm_ref {errs[worst]:.3e} in {worst!r} > "
                             f"tolerance {tol:.0e} (peer_agreement): the peer and rssm-ref compute "
                             "different things; update benchmarks/peers.py to models.py")
    return errs[worst]


def _best(fn, repeats):
    best = float("inf")
    for r in range(repeats):
        t = time.perf_counter()
        fn(r)
        best = min(best, time.perf_counter() - t)
    return best


def _first(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _check_keys(params, cfg):
    """The peer models know the core's arrays, the optional gate bias "c" (Residual SSM)
    and the linear readout's "W_out", "b_out"; anything else fails loudly."""
    core = RESIDUAL_KEYS if cfg.model == "residual" else SELECTIVE_KEYS
    known = set(core) | set(OPTIONAL_KEYS) | ({"c"} if cfg.model == "residual" else {"conv"})
    if not set(core) <= set(params) <= known:
        raise AssertionError(f"init_params({cfg.model!r}) returned keys {sorted(params)}, the peer "
                             f"models need {sorted(core)} and know {sorted(known)}: update "
                             "benchmarks/peers.py")


def _sizes(quick):
    q = 4 if quick else 1
    return {"train_batch": 256 // q, "sel_batch": 64 // q, "L": 16,
            "eval_batch": 1000 // q, "eval_L": 256 if quick else 1024}


def _row(workload, o, seconds, detail):
    return {"figure": f"peer_{workload}", "framework": o.name, "value": float(seconds), "unit": "s",
            "baseline": None, "target": "report", "pass": None,
            "detail": dict(detail, threads=o.threads, version=o.version)}


def _setup(model, batch, L):
    from rssm_ref.training.head import ModelConfig, init_params
    cfg = ModelConfig(model, "induction")
    params = init_params(cfg, seed=SEED)
    _check_keys(params, cfg)
    tok, tgt = _batch(cfg, onp.random.default_rng(SEED), batch, L)
    return cfg, params, tok, tgt


def _batch(cfg, rng, batch, L):
    """(tokens, targets) as train.py draws them: ``cfg.batch`` where the configuration
    has it, else ``tasks.make_batch`` with its vocabulary."""
    if hasattr(cfg, "batch"):
        return cfg.batch(rng, batch, L)
    from rssm_ref.training.tasks import make_batch
    return make_batch(cfg.task, rng, batch, L, cfg.n_tokens)


def _loss_check(o, cfg, params, tok, tgt, grad, what, ref=None):
    """The peer of models.loss(cfg, ·) (and its gradient when ``grad``) run once on these
    inputs and compared with rssm-ref's (``ref``: rssm-ref's result if already known).
    Returns (max rel err, run, first call's seconds); run() evaluates the peer again."""
    from autograd import value_and_grad

    from rssm_ref.training.head import loss
    _check_keys(params, cfg)
    idx, mask = _toeplitz_index(tok.shape[1])
    fn = _loss_fn(o, cfg, _constants(cfg), o.asarray(idx), o.asarray(mask))
    P = {k: o.asarray(v) for k, v in params.items()}
    tok_o, tgt_o = o.asarray(tok), o.asarray(tgt)
    if ref is None:
        ref = (value_and_grad(lambda p: loss(cfg, p, tok, tgt))(params) if grad
               else loss(cfg, params, tok, tgt))
    if grad:
        vg = o.value_and_grad(fn)

        def run():
            return o.sync(vg(P, tok_o, tgt_o))
        (value, g), first = _first(run)
        pairs = {"loss": (o.to_numpy(value), ref[0])}
        pairs.update({f"grad {k}": (o.to_numpy(g[k]), ref[1][k]) for k in params})
    else:
        f = o.compile(fn)

        def run():
            with o.no_grad():
                return o.sync(f(P, tok_o, tgt_o))
        value, first = _first(run)
        pairs = {"loss": (o.to_numpy(value), ref)}
    return _agree(pairs, what), run, first


def _wl_loss(o, workload, quick, R, ref_cache):
    from autograd import value_and_grad

    from rssm_ref.training.head import loss
    S = _sizes(quick)
    model = "selective" if workload == "selective_loss_grad" else "residual"
    batch = S["sel_batch"] if model == "selective" else S["train_batch"]
    cfg, params, tok, tgt = _setup(model, batch, S["L"])
    grad = workload != "residual_loss"
    key = (model, grad)
    if key not in ref_cache:
        ref_fn = ((lambda: value_and_grad(lambda p: loss(cfg, p, tok, tgt))(params)) if grad
                  else (lambda: loss(cfg, params, tok, tgt)))
        ref_cache[key] = (ref_fn(), _best(lambda r: ref_fn(), R))
    ref, ref_s = ref_cache[key]
    err, run, first = _loss_check(o, cfg, params, tok, tgt, grad, f"{workload} ({o.name})", ref)
    seconds = _best(lambda r: run(), R)
    detail = {"batch": batch, "L": S["L"], "m": cfg.m, "model": model, "gate": cfg.gate}
    if model == "selective":
        detail.update(n=cfg.n, discretization=cfg.discretization, output=cfg.output)
    detail.update(max_rel_err_vs_rssm_ref=err, compile_s=first, rssm_ref_s=ref_s)
    return _row(workload, o, seconds, detail)


def _wl_train_step(o, quick, R, ref_cache):
    from rssm_ref.training.head import ModelConfig, init_params
    from rssm_ref.training.train import DATA_STREAM, TrainConfig, lr_schedule, train
    S = _sizes(quick)
    batch, L = S["train_batch"], S["L"]
    cfg = ModelConfig("residual", "induction")
    params0 = init_params(cfg, seed=SEED)
    _check_keys(params0, cfg)
    # the schedule of a CHECK_STEPS-step run (the check below); timing goes on past it
    tcfg = TrainConfig(steps=CHECK_STEPS, batch=batch, L=L, seed=SEED, restarts=1)
    hyper = {"beta1": tcfg.beta1, "beta2": tcfg.beta2, "eps": tcfg.eps, "clip": tcfg.clip}
    idx, mask = _toeplitz_index(L)
    step = o.train_step(_loss_fn(o, cfg, _constants(cfg), o.asarray(idx), o.asarray(mask)), hyper)

    def run(state, k):
        """train.py's step k: its batch, then the peer's loss, gradient, clip and Adam."""
        tok, tgt = _batch(cfg, onp.random.default_rng([tcfg.seed, DATA_STREAM, k]), batch, L)
        lr = lr_schedule(k, tcfg)
        out = step(*state, o.asarray(tok), o.asarray(tgt), lr,
                   1 - tcfg.beta1 ** (k + 1), 1 - tcfg.beta2 ** (k + 1))
        return o.sync(out)

    fresh = lambda: ({k: o.asarray(v) for k, v in params0.items()},
                     {k: o.zeros(onp.shape(v)) for k, v in params0.items()},
                     {k: o.zeros(onp.shape(v)) for k, v in params0.items()})
    # check: CHECK_STEPS steps against train.train (its losses and the parameter change)
    if "train" not in ref_cache:
        ref_params, hist = train(cfg, tcfg)
        n_time = 4 if quick else 20
        t = time.perf_counter()
        train(cfg, TrainConfig(steps=n_time, batch=batch, L=L, seed=SEED, restarts=1))
        ref_cache["train"] = (ref_params, hist["loss"], (time.perf_counter() - t) / n_time, n_time)
    ref_params, ref_losses, ref_s, n_time = ref_cache["train"]
    state = fresh()
    (p, m, v, value), first = _first(lambda: run(state, 0))
    losses = [float(o.to_numpy(value))]
    for k in range(1, CHECK_STEPS):
        p, m, v, value = run((p, m, v), k)
        losses.append(float(o.to_numpy(value)))
    pairs = {f"losses of steps 0..{CHECK_STEPS - 1}": (onp.array(losses), onp.array(ref_losses))}
    pairs.update({f"change of {k}": (o.to_numpy(p[k]) - params0[k], ref_params[k] - params0[k])
                  for k in params0})
    err = _agree(pairs, f"residual_train_step ({o.name})")
    # time: steps k = 0..R-1 from the initial parameters, as a training run makes them
    holder = [fresh()]

    def timed(k):
        holder[0] = run(holder[0], k)[:3]
    seconds = _best(timed, R)
    return _row("residual_train_step", o, seconds,
                {"batch": batch, "L": L, "m": cfg.m, "gate": cfg.gate, "lr": tcfg.lr,
                 "clip": tcfg.clip, "timed": "make_batch + loss + gradient + clip + Adam",
                 "checked_steps": CHECK_STEPS, "max_rel_err_vs_rssm_ref": err,
                 "compile_s": first, "rssm_ref_s": ref_s,
                 "rssm_ref_how": f"train() for {n_time} steps, mean per step"})


_METHODS = {"scan": "difference equations (TDF-II), one step at a time",
            "fft": "exact Markov kernel (Toeplitz solve) + FFT convolution"}


def _wl_eval(o, quick, R, ref_cache):
    from rssm_ref.training.head import final_output
    S = _sizes(quick)
    batch, L = S["eval_batch"], S["eval_L"]
    cfg, params, tok, _ = _setup("residual", batch, L)
    if "eval" not in ref_cache:
        ref = final_output(cfg, params, tok)
        ref_cache["eval"] = (ref, _best(lambda r: final_output(cfg, params, tok), R))
    ref, ref_s = ref_cache["eval"]
    K = _constants(cfg)
    final = _residual_final_scan if o.long_method == "scan" else _residual_final_fft
    f = o.compile(lambda P, t: final(o, P, t, K, cfg.gate))
    P = {k: o.asarray(v) for k, v in params.items()}
    tok_o = o.asarray(tok)
    with o.no_grad():
        y, first = _first(lambda: o.sync(f(P, tok_o)))
        err = _agree({"y(L)": (o.to_numpy(y), ref)}, f"residual_eval_L1024 ({o.name})")
        seconds = _best(lambda r: o.sync(f(P, tok_o)), R)
    return _row("residual_eval_L1024", o, seconds,
                {"batch": batch, "L": L, "m": cfg.m, "gate": cfg.gate,
                 "method": _METHODS[o.long_method],
                 "max_rel_err_vs_rssm_ref": err, "compile_s": first, "rssm_ref_s": ref_s,
                 "rssm_ref_how": "models.final_output"})


def _wl_lti(o, quick, R, ref_cache):
    from rssm_ref.lti import den_from_reflection
    from rssm_ref.recurrence import tf_filter
    S = _sizes(quick)
    batch, L = S["eval_batch"], S["eval_L"]
    rng = onp.random.default_rng(SEED)
    num = rng.normal(size=(1, 1, 5))
    den = den_from_reflection(0.95 * onp.tanh(rng.normal(size=(1, 4))))   # stable, order 4
    u = rng.normal(size=(batch, L, 1))
    if "lti" not in ref_cache:
        ref = tf_filter(num, den, u)[:, :, 0]
        ref_cache["lti"] = (ref, _best(lambda r: tf_filter(num, den, u), R))
    ref, ref_s = ref_cache["lti"]
    lti = _lti_scan if o.long_method == "scan" else _lti_fft
    f = o.compile(lambda b, a, x: lti(o, b, a, x))
    b_o, a_o, u_o = o.asarray(num[0, 0]), o.asarray(den[0]), o.asarray(u[:, :, 0])
    with o.no_grad():
        y, first = _first(lambda: o.sync(f(b_o, a_o, u_o)))
        err = _agree({"y": (o.to_numpy(y), ref)}, f"lti_siso ({o.name})")
        seconds = _best(lambda r: o.sync(f(b_o, a_o, u_o)), R)
    return _row("lti_siso", o, seconds,
                {"batch": batch, "L": L, "order": 4, "method": _METHODS[o.long_method],
                 "max_rel_err_vs_rssm_ref": err,
                 "compile_s": first, "rssm_ref_s": ref_s, "rssm_ref_how": "recurrence.tf_filter"})


def _run(workload, o, quick, repeats, ref_cache=None):
    """One row: ``workload`` on the adapter ``o``, checked, then timed."""
    ref_cache = {} if ref_cache is None else ref_cache
    if workload == "residual_train_step":
        return _wl_train_step(o, quick, repeats, ref_cache)
    if workload in ("residual_loss_grad", "residual_loss", "selective_loss_grad"):
        return _wl_loss(o, workload, quick, repeats, ref_cache)
    if workload == "residual_eval_L1024":
        return _wl_eval(o, quick, repeats, ref_cache)
    if workload == "lti_siso":
        return _wl_lti(o, quick, repeats, ref_cache)
    raise ValueError(f"workload: {workload!r} (expected one of {', '.join(WORKLOADS)})")


def peer_rows(quick=False, repeats=7):
    """Time every workload in every importable peer framework, each checked against
    rssm-ref first (AssertionError above ``TOLERANCES["peer_agreement"]``).

    Returns one row per (workload, framework), workloads in ``WORKLOADS`` order; [] when
    neither framework imports (:func:`available` says why). ``quick``: batch / 4,
    L 1024 -> 256, 2 repeats.

    >>> if not any(ok for ok, _ in available().values()):
    ...     assert peer_rows(quick=True) == []
    """
    repeats = 2 if quick else int(repeats)
    if repeats < 1:
        raise ValueError(f"repeats: {repeats!r} (expected a positive integer)")
    frameworks = [fw for fw, (ok, _) in available().items() if ok]
    adapters = {fw: _ADAPTERS[fw]() for fw in frameworks}
    rows = []
    ref_cache = {}              # rssm-ref's results and times, shared by the frameworks
    for workload in WORKLOADS:
        for fw in frameworks:
            o = adapters[fw]
            o.enter()           # the framework's settings, for this workload only
            try:
                rows.append(_run(workload, o, quick, repeats, ref_cache))
            finally:
                o.restore()
    return rows
