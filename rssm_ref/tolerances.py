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
    # the same computation on channel-first inputs (transposed, so BLAS may block and sum
    # in another order): a few ulps.
    "layout_agreement": 1e-14,
    # the SSD chunked VJP (rssm_ref.kernels.ssd) vs autograd through the time loop ssd_ref
    # and through the traced chunked einsums: other summation orders of the same sums,
    # |dt' A| up to 50 (measured worst 1.1e-15; L = 4096 against a plain adjoint loop 9e-16).
    "ssd_vjp_vs_autograd": 1e-12,
    # streaming step-by-step inference vs the whole-sequence forward.
    "streaming_vs_batch": 1e-12,
    # a Mamba layer prefilled over L tokens then stepped k times against one forward over
    # L + k (the same arithmetic in another order), and the SSD chunked algorithm against
    # its recurrence (segment sums and matmuls instead of a scan)
    "prefill_vs_forward": 1e-13,
    "chunked_vs_recurrence": 1e-13,
    # real third-party code run in float64 (mambapy, HF transformers) against the oracle:
    # only BLAS summation order differs
    "third_party_float64": 1e-12,
    # a gradient that passes through a float32 cast inside third-party float64 code
    # (mambapy's A = -exp(A_log.float()), D.float()): float32's unit round-off, 6e-8, times
    # the few operations behind it
    "third_party_float32_cast": 1e-6,
    # autograd.test_util.check_grads: finite differences in float64 (its own rtol is
    # applied inside check_grads; this key documents the step size we pass).
    "check_grads_eps": 1e-6,
    # a system converted between forms (ss2tf, tf2ss) has rounded coefficients, and a
    # coefficient recursion (lfilter) is only backward stable: both are exact for coefficients
    # a few ulps off, amplified by kappa = ||1/a||_1 (over the horizon) * ||a||_1 / |a_0|
    # (scipy #17405; 1e7+ for repeated poles near |z| = 1); likewise two state recursions
    # with different summation orders differ by ulps amplified by kappa = sum_t ||A^t||_2
    # (Jordan blocks). Allowed relative error per unit kappa: 16 ulps (measured <= 6);
    # comparisons take max(their own key, this * kappa).
    "tf_coefficient_rounding": 16 * 2.0 ** -52,
    # --- verify (rssm_ref.oracle.verify): a candidate in precision P passes a tensor when
    # rel_err(candidate, float64 oracle) <= verify_factor * rel_err(oracle rerun in
    # emulated P, float64 oracle) + verify_floor_P. The factor is flash-attention's rule
    # (a dimensionless multiple, not an error); it absorbs a different but equally good
    # rounding order in the candidate.
    "verify_factor": 2.0,
    # float64 candidates are held to the recurrent-vs-FFT agreement of the cores, not let off.
    "verify_floor_float64": 1e-12,
    # 8 unit roundoffs of the format (u = 2^-24, 2^-11, 2^-8): the output rounding alone
    # costs up to 1 u, so an exactly rounded candidate always passes; defects are far above.
    "verify_floor_float32": 8 * 2.0 ** -24,
    "verify_floor_float16": 8 * 2.0 ** -11,
    "verify_floor_bfloat16": 8 * 2.0 ** -8,
    # golden --check: the same float64 algorithm rerun; differences come only from the
    # BLAS/FFT library's summation order on another machine.
    "golden_recompute": 1e-12,
    # --- backends (rssm_ref.xp.core, rssm_ref.xp.models) ---
    # the backend-neutral kernels vs the autograd NumPy cores, outputs and gradients: other
    # algorithms (doubling scan, observable realization, hand-written VJPs) for the same
    # float64 quantities; a few ulps times log2(L) or the length of the longest sum.
    "neutral_vs_reference": 1e-12,
    # the same neutral code on two array modules (CuPy vs NumPy, array_api_strict vs
    # NumPy): only the BLAS / FFT libraries' summation order differs (1e-12, docs/11-backends.md).
    "backend_agreement": 1e-12,
    # phi1 = expm1(x)/x and phi1' vs an 80-digit decimal reference, relative to each
    # value (not the max): a few ulps (measured <= 1.8 ulps over |x| in 1e-300..630).
    "special_function": 8 * 2.0 ** -52,
    # bench --peers (benchmarks/peers.py): the same model written by hand in JAX / PyTorch
    # vs rssm-ref on the same inputs, losses, gradients, Adam steps and outputs: other
    # algorithms (Toeplitz solves, TDF-II scans, other summation orders) for the same float64
    # quantities (measured <= 1e-13); a wrong equation or constant shows as >= 1e-4.
    "peer_agreement": 1e-10,
    # --- figures (rssm_ref.experiments.explain): two channels drawn in one panel are called
    # coincident in its legend when they differ by at most this fraction of the panel's
    # scale (largest |h|, or the pole-zero view's width): under a pixel at the figures' size.
    "figure_coincide": 1e-3,
    # the leak law's accuracy against the measured one, in points of % (docs/13 section 1:
    # the criterion its prediction is held to, at L = 2^11 ... 2^16)
    "leak_law_points": 5.0,
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
