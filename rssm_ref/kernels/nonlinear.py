"""The static nonlinearities, once: the gate's σ (s(t) = σ(r(t) + c), Section 3.2.2
below eq. (5)), its slope, and the softplus of eq. (4a). Every module that needs one
calls these (autograd.numpy by default; ``xp`` an array namespace for the backends).

>>> [round(float(v), 6) for v in sigmoid(onp.array([-1e4, 0.0, 1e4]))]
[0.0, 0.5, 1.0]
>>> float(sigmoid_slope(onp.array(0.0)))
0.25
"""
import autograd.numpy as np
import numpy as onp

__all__ = ["sigmoid", "silu", "sigmoid_", "sigmoid_slope", "log_sigmoid", "softplus", "softplus_slope",
           "softplus_np"]


def sigmoid(x, xp=np):
    """σ(x) = 1 / (1 + e^{−x}) written as (1 + tanh(x/2)) / 2: no overflow for any finite
    x, differentiable with autograd.

    >>> float(sigmoid(onp.array(0.0)))
    0.5
    """
    return 0.5 * (xp.tanh(0.5 * x) + 1.0)


def silu(x, xp=np):
    """SiLU(x) = x σ(x) (Mamba's activation after the conv and on the gate z; Gu & Dao,
    Algorithm 2), with the σ of :func:`sigmoid`.

    >>> [round(float(v), 6) for v in silu(onp.array([-1e4, 0.0, 1.0]))]
    [-0.0, 0.0, 0.731059]
    """
    return x * sigmoid(x, xp)


def sigmoid_(x):
    """σ(x) in place on a float64 NumPy array x (the evaluation path: no temporaries),
    the same operations in the same order as :func:`sigmoid`, so the same bits.

    >>> x = onp.array([0.0, 2.0]); sigmoid_(x) is x and bool(onp.all(x == sigmoid(onp.array([0.0, 2.0]))))
    True
    """
    x *= 0.5
    onp.tanh(x, out=x)
    x += 1.0
    x *= 0.5
    return x


def sigmoid_slope(x, xp=onp):
    """σ'(x) = e^{−|x|} / (1 + e^{−|x|})², accurate where σ(1 − σ) would cancel (σ → 1).

    >>> float(sigmoid_slope(onp.array(50.0))) > 0
    True
    """
    q = xp.exp(-xp.abs(x))
    return q / ((1.0 + q) * (1.0 + q))


def log_sigmoid(x):
    """log σ(x) = −log(1 + e^{−x}), stable for large |x| (for gate-based losses).

    >>> round(float(log_sigmoid(-1000.0)), 6)
    -1000.0
    """
    return -np.logaddexp(0.0, -x)


def softplus(x):
    """τ(x) = log(1 + e^x) (eq. (4a)), stable for large |x| via logaddexp.

    >>> [round(float(v), 6) for v in softplus(onp.array([-50.0, 0.0, 50.0]))]
    [0.0, 0.693147, 50.0]
    """
    return np.logaddexp(0.0, x)


def softplus_slope(x):
    """τ'(x) = σ(x) on a NumPy array, computed as e^x / (1 + e^x) below 0 (where
    (1 + tanh(x/2)) / 2 would cancel) and 1 / (1 + e^{−x}) above: the softplus VJP.

    >>> float(softplus_slope(onp.array(-800.0))) >= 0.0
    True
    """
    q = onp.exp(-onp.abs(x))
    return onp.where(x >= 0, 1.0, q) / (1.0 + q)


def softplus_np(x):
    """τ(x) = max(x, 0) + log1p(e^{−|x|}) on a NumPy array: the fused kernels' form of
    :func:`softplus` (the same function to a few ulps, without autograd's boxes).

    >>> float(softplus_np(onp.array(0.0))) == float(softplus(onp.array(0.0)))
    True
    """
    return onp.maximum(x, 0.0) + onp.log1p(onp.exp(-onp.abs(x)))
