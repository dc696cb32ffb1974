"""The Residual SSM of Section 3.2.2 (Fig. 3): three LTI systems and a gate.

    u ──► Σ (= Σ_f and Σ_M joined, footnote 2) ──► y_s ──────────────┐
    │                                              │                 ▼
    └──────────────(−)──────────────► y_s − u ──► Σ_r ──► r ──► s = σ(r + c) ──► Σ_g ──► y

Equations (the paper's, discrete time, zero initial states):

    Σ   : y_s = Σ(u)                       MIMO LTI, m inputs -> m outputs
    Σ_r : r   = Σ_r(y_s − u)               LTI, m inputs -> 1 output (the residual)
          s(t) = σ(r(t) + c)               c = ``gate_bias``; σ the logistic sigmoid
    Σ_g : y(t+1) = y(t) + (y_s(t) − y(t)) s(t),    y(0) = 0              (eq. (5))
          or, with ``gate="zoh"``, Remark 3.1's exact ZOH step
          y(t+1) = e^{−s(t)} y(t) + (1 − e^{−s(t)}) y_s(t).

Inputs are u(0..L−1); the returned output is y(1..L), so ``y[:, -1]`` has seen every
input. Any fixed gain in front of the sigmoid (the training recipe uses s = σ(3(r + c)))
is folded into Σ_r's numerator and the bias before calling these functions, so the
convention here is always s = σ(r + gate_bias).

Both of Remark 3.2's forms are supported: transfer-function parameters
(``residual_ssm_tf``, trained on the FFT path) and a state-space realization
(``residual_ssm_ss``); they give the same outputs to round-off. ``residual_ssm_ref``
is the obvious twin: one loop over time that steps Σ, Σ_r and the gate together.

Glossary (shapes)
-----------------
batch, L, m      sequences, their length, the embedding width (m inputs and outputs of Σ)
u   (batch, L, m)         input sequence u(0..L−1)
y_s (batch, L, m)         Σ's output;      r (batch, L)   residual;   s (batch, L) gate
y   (batch, L, m)         gate output y(1..L)
sigma_num (m, m, k), sigma_den (m, k)         Σ as a transfer matrix (descending powers of z)
r_num (1, m, k_r),   r_den (1, k_r)           Σ_r as a transfer matrix
sigma_A (n, n), sigma_B (n, m), sigma_C (m, n), sigma_D (m, m)   Σ in state space
r_A (n_r, n_r), r_B (n_r, m), r_C (1, n_r), r_D (1, m)           Σ_r in state space
gate_bias        scalar c

>>> model = ResidualSSM.random(m=2, nu=4, nu_r=4, seed=0)
>>> u = onp.random.default_rng(0).normal(size=(3, 16, 2))
>>> y_fft = model.forward(u, path="fft")
>>> y_rec = model.forward(u, path="recurrent")
>>> y_ss = model.to_ss().forward(u)
>>> bool(onp.allclose(y_fft, y_rec, rtol=0, atol=1e-12) and onp.allclose(y_ss, y_rec, rtol=0, atol=1e-12))
True
"""
import autograd.numpy as np
import numpy as onp

from rssm_ref.convolution import ss_fft_filter, tf_fft_filter
from rssm_ref.gate import gate as gate_scan, gate_final, gate_step
from rssm_ref.kernels.convolution import DIRECT_MAX_L
from rssm_ref.kernels.nonlinear import log_sigmoid, sigmoid
from rssm_ref.kernels.residual import (final_kernel, final_kernel_gate_mean, final_recurrent,
                                       GATE_STATS)
from rssm_ref.lti import StateSpace, tf2ss, TransferFunction
from rssm_ref.realization import den_from_reflection
from rssm_ref.recurrence import ss_filter, tf_filter
from rssm_ref.validation import (check_array, check_option, check_residual_ss, check_residual_tf,
                                 check_u, FINAL_PATHS, GATES, is_traced, on_other_backend, PATHS)
from rssm_ref.xp.models import residual_ssm_xp

__all__ = [
    "sigmoid", "log_sigmoid", "residual_ssm_tf", "residual_ssm_ss", "residual_ssm_ref",
    "residual_ssm_final", "residual_ssm_final_ref", "ResidualSSM", "param_count",
]


# ------------------------------------------------------------------ validation


def _check_bias(gate_bias):
    if not is_traced(gate_bias):
        arr = check_array("gate_bias", gate_bias)
        if onp.size(arr) != 1:
            raise ValueError(f"gate_bias: expected a scalar, got shape {onp.shape(arr)}")
        return float(onp.reshape(arr, ()))
    return gate_bias


# ------------------------------------------------------------------ the model, both forms
def _gate_and_pack(y_s, r, gate_bias, gate, return_intermediates):
    # s(t) = σ(r(t) + c), then Σ_g (eq. (5), or Remark 3.1 with gate="zoh")
    s = sigmoid(r + gate_bias)
    y = gate_scan(y_s, s, None, gate)
    if return_intermediates:
        return y, {"y_s": y_s, "r": r, "s": s}
    return y


_TF_KEYS = ("sigma_num", "sigma_den", "r_num", "r_den")
_SS_KEYS = ("sigma_A", "sigma_B", "sigma_C", "sigma_D", "r_A", "r_B", "r_C", "r_D")


def _on_backend(P, gate_bias, u, path, gate, return_intermediates, allow_unstable):
    """u from CuPy / array_api_strict: the same model through rssm_ref.xp.models on u's
    module (outputs on that module; not traced by autograd -- use ``residual_ssm_xp``'s
    ``dy`` for gradients there)."""
    P["gate_bias"] = _check_bias(gate_bias)
    out = residual_ssm_xp(P, u, path=path, gate=gate, allow_unstable=allow_unstable)
    if return_intermediates:
        return out["y"], {k: out[k] for k in ("y_s", "r", "s")}
    return out["y"]


def residual_ssm_ref(sigma_A, sigma_B, sigma_C, sigma_D, r_A, r_B, r_C, r_D, gate_bias, u,
                     gate="euler", return_intermediates=False):
    """The `_ref` twin: one plain loop over time stepping Σ, Σ_r, σ and Σ_g together.

    Same arguments and outputs as ``residual_ssm_ss`` (state-space form). Written for
    clarity, not speed; differentiable by autograd (collects and stacks, no assignment).

    >>> m = ResidualSSM.random(seed=3).to_ss()
    >>> u = onp.random.default_rng(1).normal(size=(2, 6, 2))
    >>> bool(onp.allclose(residual_ssm_ref(*m.ss_arrays(), u), m.forward(u), rtol=0, atol=1e-13))
    True
    """
    check_option("gate", gate, GATES)
    (sA, sB, sC, sD, rA, rB, rC, rD), m = check_residual_ss(
        (sigma_A, sigma_B, sigma_C, sigma_D, r_A, r_B, r_C, r_D), allow_unstable=True)
    u = check_u(u, m)
    batch, L, _ = onp.shape(u)
    h = np.zeros((batch, onp.shape(sA)[0]))
    h_r = np.zeros((batch, onp.shape(rA)[0]))
    y = np.zeros((batch, m))
    ys_list, r_list, s_list, y_list = [], [], [], []
    for t in range(L):
        u_t = u[:, t, :]
        # Σ : y_s(t) = C h(t) + D u(t);  h(t+1) = A h(t) + B u(t)
        y_s_t = np.dot(h, sC.T) + np.dot(u_t, sD.T)
        h = np.dot(h, sA.T) + np.dot(u_t, sB.T)
        # Σ_r on e(t) = y_s(t) − u(t)
        e_t = y_s_t - u_t
        r_t = np.dot(h_r, rC.T)[:, 0] + np.dot(e_t, rD.T)[:, 0]
        h_r = np.dot(h_r, rA.T) + np.dot(e_t, rB.T)
        # s(t) = σ(r(t) + c);  Σ_g, eq. (5) or Remark 3.1
        s_t = sigmoid(r_t + gate_bias)
        if gate == "euler":
            y = y + (y_s_t - y) * s_t[:, None]
        else:
            decay = np.exp(-s_t)[:, None]
            y = decay * y + (1.0 - decay) * y_s_t
        ys_list.append(y_s_t)
        r_list.append(r_t)
        s_list.append(s_t)
        y_list.append(y)
    y_out = np.stack(y_list, axis=1)
    if return_intermediates:
        return y_out, {"y_s": np.stack(ys_list, axis=1), "r": np.stack(r_list, axis=1),
                       "s": np.stack(s_list, axis=1)}
    return y_out


def residual_ssm_tf(sigma_num, sigma_den, r_num, r_den, gate_bias, u, path="fft",
                    gate="euler", return_intermediates=False, allow_unstable=False):
    """Residual SSM (Fig. 3, eq. (5)) with Σ and Σ_r as transfer matrices (Remark 3.2).

    Shapes: sigma_num (m, m, k), sigma_den (m, k), r_num (1, m, k_r), r_den (1, k_r),
    gate_bias scalar, u (batch, L, m) -> y (batch, L, m) = y(1..L); with
    ``return_intermediates`` also {"y_s": (batch, L, m), "r": (batch, L), "s": (batch, L)}.
    ``path="fft"`` is the paper's state-free training route (Section 4.1, exact: the
    aliasing tail is corrected), ``"recurrent"`` the difference equation. Differentiable
    with autograd in every array argument.

    >>> m = ResidualSSM.random(seed=1)
    >>> u = onp.ones((1, 8, 2))
    >>> y, mid = residual_ssm_tf(*m.tf_arrays(), u, return_intermediates=True)
    >>> y.shape, mid["s"].shape, bool(((mid["s"] > 0) & (mid["s"] < 1)).all())
    ((1, 8, 2), (1, 8), True)
    """
    check_option("path", path, PATHS)
    check_option("gate", gate, GATES)
    sigma_num, sigma_den, r_num, r_den, m = check_residual_tf(sigma_num, sigma_den, r_num, r_den, allow_unstable)
    if on_other_backend(u):
        return _on_backend(dict(zip(_TF_KEYS, (sigma_num, sigma_den, r_num, r_den))), gate_bias,
                           u, path, gate, return_intermediates, allow_unstable)
    u = check_u(u, m)
    gate_bias = _check_bias(gate_bias)
    filt = tf_fft_filter if path == "fft" else tf_filter
    # Σ : y_s = Σ(u)
    y_s = filt(sigma_num, sigma_den, u)
    # Σ_r : r = Σ_r(y_s − u), the residual of the fault-detection analogy
    r = filt(r_num, r_den, y_s - u)[:, :, 0]
    return _gate_and_pack(y_s, r, gate_bias, gate, return_intermediates)


def residual_ssm_final_ref(sigma_num, sigma_den, r_num, r_den, gate_bias, u, gate="euler",
                           gate_mean=False):
    """Twin of :func:`residual_ssm_final`: the loop of ``residual_ssm_ref`` (Σ, Σ_r and
    the gate stepped together) on the observable realization, last output kept; with
    ``gate_mean`` also s̄ = mean_t s(t) of the loop's s as a last column (or, with
    ``gate_mean="relative"``, the statistic of that name, as ``residual_ssm_final``).

    >>> m = ResidualSSM.random(seed=2)
    >>> residual_ssm_final_ref(*m.tf_arrays(), onp.ones((1, 3, 2))).shape
    (1, 2)
    >>> residual_ssm_final_ref(*m.tf_arrays(), onp.ones((1, 3, 2)), gate_mean=True).shape
    (1, 3)
    """
    sigma = tf2ss(sigma_num, sigma_den)
    r_sys = tf2ss(r_num, r_den)
    if not gate_mean:
        return residual_ssm_ref(*sigma, *r_sys, gate_bias, u, gate=gate)[:, -1]
    y, mid = residual_ssm_ref(*sigma, *r_sys, gate_bias, u, gate=gate, return_intermediates=True)
    return _with_gate_mean(y[:, -1], mid["s"], _stat_mode(gate_mean))


def _stat_mode(gate_mean):
    mode = "mean" if gate_mean is True else gate_mean
    check_option("gate_mean", mode, GATE_STATS)
    return mode


def _with_gate_mean(y_L, s, mode="mean"):
    """[y(L), stat]: the gate's statistic (kernels.residual.gate_stat) appended to y(L) as
    a last column, (batch, m + 1), in autograd's own operations."""
    if mode == "mean":
        stat = np.mean(s, axis=1)
    else:
        M = np.max(s, axis=1)
        stat = (np.sum(s, axis=1) - M) / M
    return np.concatenate([y_L, stat[:, None]], axis=1)


def residual_ssm_final(sigma_num, sigma_den, r_num, r_den, gate_bias, u, path="auto",
                       gate="euler", allow_unstable=False, gate_mean=False):
    """The Residual SSM's last output y(L) only (Fig. 3, eq. (5)): what the readout uses.

    Shapes and arguments as :func:`residual_ssm_tf`; returns (batch, m).
    ``path="kernel"``: Σ and Σ_r as their exact first L Markov parameters (the
    difference equation on an impulse) applied by causal convolution (one block-Toeplitz
    matmul for L <= DIRECT_MAX_L, FFTs above), then :func:`rssm_ref.gate.gate_final`;
    one autograd primitive whose VJP chains the blocks' hand-written VJPs (the training
    path: ~1/20 of autograd's bookkeeping). ``path="recurrent"`` / ``"fft"``: the
    difference equation (scipy lfilter) / the exact state-free FFT route for Σ and Σ_r,
    then ``gate_final``. ``"auto"``: "kernel" for L <= DIRECT_MAX_L, else "recurrent"
    (at m = 2, p m lfilter calls beat the FFTs of a long convolution). Equal to
    ``residual_ssm_tf(...)[:, -1]`` to rounding (tests: ``fast_vs_ref``).
    ``gate_mean``: returns (batch, m + 1), y(L) and as a last column the gate's mean
    opening s̄ = mean_t s(t) (a training penalty's input; the kernel path gives both from
    one fused primitive, ``final_kernel_gate_mean``, the others trace s with autograd);
    ``gate_mean="relative"``: instead (Σ_t s(t) − max_t s(t)) / max_t s(t), the openings
    off the largest one relative to it (kernels.residual.gate_stat).

    >>> m = ResidualSSM.random(seed=1)
    >>> u = onp.random.default_rng(0).normal(size=(2, 12, 2))
    >>> bool(onp.allclose(residual_ssm_final(*m.tf_arrays(), u), residual_ssm_tf(*m.tf_arrays(), u)[:, -1], rtol=0, atol=1e-14))
    True
    >>> residual_ssm_final(*m.tf_arrays(), u, gate_mean=True).shape
    (2, 3)
    """
    check_option("path", path, ("auto",) + FINAL_PATHS)
    check_option("gate", gate, GATES)
    sigma_num, sigma_den, r_num, r_den, m = check_residual_tf(sigma_num, sigma_den, r_num, r_den, allow_unstable)
    u = check_u(u, m)
    gate_bias = _check_bias(gate_bias)
    L = onp.shape(u)[1]
    if path == "auto":
        path = "kernel" if L <= DIRECT_MAX_L else "recurrent"
    traced = any(is_traced(a) for a in (sigma_num, sigma_den, r_num, r_den, gate_bias, u))
    if path == "kernel":
        if gate_mean:
            return final_kernel_gate_mean(sigma_num, sigma_den, r_num, r_den, gate_bias, u,
                                          gate, traced, _stat_mode(gate_mean))
        return final_kernel(sigma_num, sigma_den, r_num, r_den, gate_bias, u, gate, traced)
    if path == "recurrent" and not traced and not gate_mean:
        return final_recurrent(sigma_num, sigma_den, r_num, r_den, gate_bias, u, gate)
    filt = tf_fft_filter if path == "fft" else tf_filter
    y_s = filt(sigma_num, sigma_den, u)
    r = filt(r_num, r_den, y_s - u)[:, :, 0]
    s = sigmoid(r + gate_bias)
    y_L = gate_final(y_s, s, gate)
    return _with_gate_mean(y_L, s, _stat_mode(gate_mean)) if gate_mean else y_L


def residual_ssm_ss(sigma_A, sigma_B, sigma_C, sigma_D, r_A, r_B, r_C, r_D, gate_bias, u,
                    path="recurrent", gate="euler", return_intermediates=False, allow_unstable=False):
    """Residual SSM (Fig. 3, eq. (5)) with Σ and Σ_r in state space (Remark 3.2).

    Σ : h(t+1) = sigma_A h(t) + sigma_B u(t),  y_s(t) = sigma_C h(t) + sigma_D u(t);
    Σ_r likewise on e(t) = y_s(t) − u(t) with r_A .. r_D. Shapes in the module glossary.
    ``path="recurrent"`` runs the state recursion, ``"fft"`` the Markov-kernel convolution.

    >>> m = ResidualSSM.random(seed=2).to_ss()
    >>> u = onp.ones((2, 5, 2))
    >>> residual_ssm_ss(*m.ss_arrays(), u).shape
    (2, 5, 2)
    """
    check_option("path", path, PATHS)
    check_option("gate", gate, GATES)
    arrs, m = check_residual_ss((sigma_A, sigma_B, sigma_C, sigma_D, r_A, r_B, r_C, r_D), allow_unstable)
    (sA, sB, sC, sD, rA, rB, rC, rD) = arrs
    if on_other_backend(u):
        return _on_backend(dict(zip(_SS_KEYS, arrs)), gate_bias, u, path, gate, return_intermediates,
                           allow_unstable)
    u = check_u(u, m)
    gate_bias = _check_bias(gate_bias)
    filt = ss_fft_filter if path == "fft" else ss_filter
    y_s = filt(sA, sB, sC, sD, u)
    r = filt(rA, rB, rC, rD, y_s - u)[:, :, 0]
    return _gate_and_pack(y_s, r, gate_bias, gate, return_intermediates)


# ------------------------------------------------------------------ the object
class ResidualSSM:
    """A Residual SSM: Σ and Σ_r (each an lti ``TransferFunction`` or ``StateSpace``),
    the gate bias c and the gate kind ("euler" = eq. (5), "zoh" = Remark 3.1).

    >>> model = ResidualSSM.random(m=2, nu=4, nu_r=4, seed=0)
    >>> model.m, model.sigma.order, model.r_sys.order
    (2, 8, 4)
    """

    def __init__(self, sigma, r_sys, gate_bias=0.0, gate="euler", allow_unstable=False):
        if not isinstance(sigma, (TransferFunction, StateSpace)):
            raise TypeError("sigma: expected an rssm_ref.lti TransferFunction or StateSpace")
        if not isinstance(r_sys, (TransferFunction, StateSpace)):
            raise TypeError("r_sys: expected an rssm_ref.lti TransferFunction or StateSpace")
        check_option("gate", gate, GATES)
        m = sigma.n_inputs
        if sigma.n_outputs != m:
            raise ValueError(f"sigma: expected an m x m system, got {sigma.n_outputs} x {m}")
        if r_sys.n_inputs != m or r_sys.n_outputs != 1:
            raise ValueError(
                f"r_sys: expected 1 output and {m} inputs, got {r_sys.n_outputs} x {r_sys.n_inputs}")
        if not allow_unstable:
            for name, sys_ in (("sigma", sigma), ("r_sys", r_sys)):
                if not sys_.is_stable():
                    raise ValueError(f"{name}: unstable (a pole on or outside the unit circle; "
                                     "pass allow_unstable=True to override)")
        self.sigma, self.r_sys = sigma, r_sys
        self.gate_bias = _check_bias(gate_bias)
        self.gate = gate
        self.m = m

    # -- parameters ------------------------------------------------------------
    @property
    def form(self):
        """"tf" if both systems are transfer functions, "ss" if both are state space."""
        if isinstance(self.sigma, TransferFunction) and isinstance(self.r_sys, TransferFunction):
            return "tf"
        return "ss"

    def tf_arrays(self):
        """(sigma_num, sigma_den, r_num, r_den, gate_bias) in the transfer-function form."""
        s, r = self.sigma.to_tf(), self.r_sys.to_tf()
        return s.num, s.den, r.num, r.den, self.gate_bias

    def ss_arrays(self):
        """(sigma_A, sigma_B, sigma_C, sigma_D, r_A, r_B, r_C, r_D, gate_bias)."""
        s, r = self.sigma.to_ss(), self.r_sys.to_ss()
        return s.A, s.B, s.C, s.D, r.A, r.B, r.C, r.D, self.gate_bias

    def to_ss(self):
        """The same model with both systems realized in state space (Remark 3.2)."""
        return ResidualSSM(self.sigma.to_ss(), self.r_sys.to_ss(), self.gate_bias, self.gate,
                           allow_unstable=True)

    def to_tf(self):
        """The same model with both systems as transfer matrices."""
        return ResidualSSM(self.sigma.to_tf(), self.r_sys.to_tf(), self.gate_bias, self.gate,
                           allow_unstable=True)

    # -- whole sequences -------------------------------------------------------
    def forward(self, u, path=None, return_intermediates=False):
        """y(1..L) for u (batch, L, m); path defaults to "fft" (tf form) or "recurrent" (ss)."""
        if self.form == "tf":
            return residual_ssm_tf(*self.tf_arrays(), u, path=path or "fft", gate=self.gate,
                                   return_intermediates=return_intermediates, allow_unstable=True)
        return residual_ssm_ss(*self.ss_arrays(), u, path=path or "recurrent", gate=self.gate,
                               return_intermediates=return_intermediates, allow_unstable=True)

    # -- streaming ---------------------------------------------------------------
    def _realization(self):
        # computed once: streaming calls step() L times
        if getattr(self, "_ss_cache", None) is None:
            self._ss_cache = (self.sigma.to_ss(), self.r_sys.to_ss())
        return self._ss_cache

    def init_state(self, batch):
        """Zero state for ``batch`` streams: Σ's state, Σ_r's state and the gate output y."""
        s, r = self._realization()
        return {"h": onp.zeros((batch, s.order)), "h_r": onp.zeros((batch, r.order)),
                "y": onp.zeros((batch, self.m))}

    def step(self, state, u_t):
        """One step of recurrent inference: (state at t, u(t) (batch, m)) -> (state at t+1, y(t+1)).

        Splitting a sequence anywhere and carrying the state gives the same outputs as
        ``forward``.

        >>> model = ResidualSSM.random(seed=4)
        >>> u = onp.random.default_rng(2).normal(size=(1, 5, 2))
        >>> st = model.init_state(1)
        >>> ys = []
        >>> for t in range(5):
        ...     st, y_t = model.step(st, u[:, t])
        ...     ys.append(y_t)
        >>> bool(onp.allclose(onp.stack(ys, 1), model.forward(u), rtol=0, atol=1e-12))
        True
        """
        u_t = check_array("u_t", u_t, ndim=2)
        if onp.shape(u_t)[1] != self.m:
            raise ValueError(f"u_t: expected shape (batch, {self.m}), got {onp.shape(u_t)}")
        s, r = self._realization()
        h, y_s_t = s.step(state["h"], u_t)
        h_r, r_t = r.step(state["h_r"], y_s_t - u_t)
        s_t = sigmoid(r_t[:, 0] + self.gate_bias)
        y = gate_step(state["y"], y_s_t, s_t, self.gate)
        return {"h": h, "h_r": h_r, "y": y}, y

    # -- construction ------------------------------------------------------------
    @classmethod
    def random(cls, m=2, nu=4, nu_r=4, seed=0, gate="euler", gate_bias=0.0):
        """Random stable parameters in transfer-function form.

        Denominators come from reflection coefficients k = 0.5 tanh(θ), θ ~ N(0, 0.3²),
        by the step-up recursion, so every pole lies inside the unit circle by
        construction; numerators N(0, 0.5²) scaled by 0.3^lag.

        >>> ResidualSSM.random(seed=5).sigma.is_stable()
        True
        """
        rng = onp.random.default_rng(seed)

        def den(rows, order):
            return den_from_reflection(0.5 * onp.tanh(rng.normal(0.0, 0.3, size=(rows, order))))

        def num(rows, cols, order):
            decay = 0.3 ** onp.arange(order + 1)
            return rng.normal(0.0, 0.5, size=(rows, cols, order + 1)) * decay

        sigma = TransferFunction(num(m, m, nu), den(m, nu))
        r_sys = TransferFunction(num(1, m, nu_r), den(1, nu_r))
        return cls(sigma, r_sys, gate_bias=gate_bias, gate=gate)


def param_count(m=2, nu=4, nu_r=4, form="tf", gate_bias=False):
    """Learnable parameters of the Residual SSM core (without the embedding), eqs. (8)-(9)
    generalized to MIMO with one common monic denominator per output row.

    form="tf" (eq. (9)): Σ has m monic denominators of order ν (m·ν) and m·m numerators of
    ν + 1 coefficients (the +1 is the feedthrough D); Σ_r has ν_r + m(ν_r + 1):
    m ν + m²(ν+1) + ν_r + m(ν_r+1).
    form="ss" (eq. (8)): Σ with n = mν states: n² + 2 n m + m²; Σ_r with n_r = ν_r states:
    n_r² + n_r m + n_r + m. ``gate_bias``: + 1 (a learned bias c in s = σ(r + c), which
    the paper does not have).

    >>> param_count(2, 4, 4, "tf"), param_count(2, 4, 4, "ss"), param_count(2, 4, 4, gate_bias=True)
    (42, 130, 43)
    """
    check_option("form", form, ("tf", "ss"))
    bias = 1 if gate_bias else 0
    if form == "tf":
        return m * nu + m * m * (nu + 1) + nu_r + m * (nu_r + 1) + bias
    n, n_r = m * nu, nu_r
    return (n * n + 2 * n * m + m * m) + (n_r * n_r + n_r * m + n_r + m) + bias
