"""Every numerical tolerance of rssm-ref, in one place, keyed by what is compared.

All errors are *relative to the scale of the reference*:

    err(actual, desired) = max |actual - desired| / max(max |desired|, tiny)

so that a tolerance means "this many units of the largest output value". A tolerance
is never loosened to make a test pass; if a comparison fails, the code is wrong or the
comparison is ill-posed (then say why next to its key).

Glossary
--------
TOLERANCES : dict[str, float]   key -> largest allowed relative error (float64)
rel_err(actual, desired) -> float
assert_close(actual, desired, key, what="")   raises AssertionError naming the key

>>> rel_err([1.0, 2.0], [1.0, 2.0 + 1e-15]) < 1e-15
True
>>> assert_close([1.0, 2.0], [1.0, 2.0], "fast_vs_ref")
"""
import numpy as onp

TINY = 1e-300

TOLERANCES = {
    # fast path vs its `_ref` loop written straight from the equation (same algebra,
    # different summation order): a few ulps times the length of the longest sum.
    "fast_vs_ref": 1e-12,
    # recurrent path vs FFT convolution (Markov-kernel and aliasing-corrected
    # transfer-function routes), poles up to |p| = 0.999, L up to 65536.
    "recurrent_vs_fft": 1e-12,
    # state space vs transfer function (impulse / frequency response, or outputs of
    # one model run in both forms, Remark 3.2).
    "ss_vs_tf": 1e-12,
    # our LTI paths vs scipy.signal.lfilter / dlsim on the same system.
    "scipy_agreement": 1e-12,
    # our discretizations vs scipy.signal.cont2discrete (both float64, both via expm).
    "discretize_vs_scipy": 1e-12,
    # an analytic VJP vs autograd's reverse mode through the `_ref` loop.
    "vjp_vs_autograd": 1e-11,
    # streaming step-by-step inference vs the whole-sequence forward.
    "streaming_vs_batch": 1e-12,
    # autograd.test_util.check_grads: finite differences in float64 (its own rtol is
    # applied inside check_grads; this key documents the step size we pass).
    "check_grads_eps": 1e-6,
}


def rel_err(actual, desired):
    """Max absolute difference divided by the max magnitude of ``desired``.

    Shapes: any two broadcast-compatible arrays. Returns a Python float.

    >>> rel_err([0.0, 1.0], [0.0, 2.0])
    0.5
    """
    actual = onp.asarray(actual, dtype=complex if onp.iscomplexobj(actual) else float)
    desired = onp.asarray(desired, dtype=complex if onp.iscomplexobj(desired) else float)
    if actual.shape != desired.shape:
        raise AssertionError(f"shape mismatch: {actual.shape} vs {desired.shape}")
    if actual.size == 0:
        return 0.0
    scale = max(float(onp.max(onp.abs(desired))), TINY)
    return float(onp.max(onp.abs(actual - desired))) / scale


def assert_close(actual, desired, key, what=""):
    """Assert ``rel_err(actual, desired) <= TOLERANCES[key]``.

    >>> assert_close([1.0], [1.0 + 1e-14], "ss_vs_tf")
    """
    tol = TOLERANCES[key]
    err = rel_err(actual, desired)
    if not err <= tol:
        label = f" ({what})" if what else ""
        raise AssertionError(f"{key}{label}: relative error {err:.3e} > tolerance {tol:.1e}")
