"""Input checks shared by every public entry point.

Bad input gets a clear ``ValueError`` or ``TypeError`` naming the argument and what was
expected, never a traceback from deep inside NumPy and never a silent wrong answer.
The oracle's file loader reuses these messages, so a CLI user and a library user read
the same sentence.

Glossary
--------
check_array(name, x, ndim=None, shape=None)   -> float64 ndarray (a copy-free view if possible)
check_stable_den(name, den, allow_unstable=False)
check_tokens(name, tokens, vocab_size)
check_option(name, value, allowed)             one of the options tuples below
check_length(name, L, minimum=1)              an int >= minimum
check_u(u, m=None, what=None)                 inputs (batch, L >= 1, m)
check_state_space(A, B, C, D, prefix="")      shapes against each other
check_tf(num, den, proper=False, stable=False)   a transfer matrix num (p, m, k), den (p, k)
check_spectral_radius(name, A, fix)           every eigenvalue strictly inside |z| = 1
check_residual_tf / check_residual_ss         Σ (m x m) and Σ_r (m -> 1) of Section 3.2.2

The options, once: PATHS (the LTI and Residual paths), FINAL_PATHS, TRAINING_PATHS,
GATES (eq. (5) and Remark 3.1), DISCRETIZATIONS (eq. (3b) and Euler), OUTPUTS.

>>> check_array("u", [[1.0, 2.0]], ndim=2).shape
(1, 2)
>>> check_array("u", [1.0, float("nan")])
Traceback (most recent call last):
...
ValueError: u: contains NaN or inf (expected finite float64 values)
"""
import math

import numpy as onp
from autograd.tracer import getval

# ------------------------------------------------------------------ the options, once
PATHS = ("recurrent", "fft")                       # eq. (1) as a recurrence, or its kernel by FFT
FINAL_PATHS = ("kernel", "recurrent", "fft")       # the last output only (training)
TRAINING_PATHS = ("auto",) + FINAL_PATHS
GATES = ("euler", "zoh")                           # eq. (5), Remark 3.1
DISCRETIZATIONS = ("zoh", "euler")                 # eq. (3b), mamba_ssm's Euler B
OUTPUTS = ("before", "after")                      # eq. (2): y from h(t), or from h(t + 1)


def is_traced(x):
    # autograd's ArrayBox: shape checks only, values are not ours to inspect.
    return type(x).__name__ == "ArrayBox"


def on_other_backend(x):
    # CuPy / array_api_strict arrays: onp.asarray would copy from the GPU or fail obscurely
    return type(x).__module__.split(".")[0] in ("cupy", "array_api_strict")


def check_array(name, x, ndim=None, shape=None, allow_int=True):
    """Return ``x`` as a finite float64 array, or raise naming ``name``.

    ``shape`` may contain ``None`` for free dimensions. Complex, object, string and
    boolean arrays are rejected (TypeError); integers are converted unless
    ``allow_int=False``. autograd-traced values are only shape-checked.

    >>> check_array("D", [[1]], shape=(1, 1)).dtype
    dtype('float64')
    """
    if is_traced(x):
        arr = x
        kind = "f"
    elif on_other_backend(x):
        mod = type(x).__module__.split(".")[0]
        raise TypeError(f"{name}: an array from {mod} given to a NumPy core (expected a NumPy array; "
                        "run it through rssm_ref.xp.models, e.g. residual_ssm_xp, or move it "
                        "to the host with rssm_ref.xp.backend.to_host)")
    else:
        arr = onp.asarray(x)
        kind = arr.dtype.kind
        if kind == "O":
            raise TypeError(f"{name}: object array (expected float64)")
        if kind == "c":
            raise TypeError(f"{name}: complex dtype {arr.dtype} (expected real float64)")
        if kind in "USVbM" or (kind in "iu" and not allow_int):
            raise TypeError(f"{name}: dtype {arr.dtype} (expected float64)")
        if kind not in "fiu":
            raise TypeError(f"{name}: dtype {arr.dtype} (expected float64)")
        arr = arr.astype(onp.float64, copy=False)
    shp = onp.shape(arr)
    if ndim is not None and len(shp) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {shp}")
    if shape is not None:
        if len(shp) != len(shape) or any(s is not None and s != t for s, t in zip(shape, shp)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name}: expected shape {want}, got {shp}")
    if not is_traced(arr) and not onp.all(onp.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf (expected finite float64 values)")
    return arr


def check_stable_den(name, den, allow_unstable=False):
    """Refuse denominator rows (descending powers of z) with a root on/outside |z| = 1.

    ``den`` shape (p, k) or (k,). Leading coefficients must be nonzero.

    >>> check_stable_den("den", [[1.0, -0.5]])
    >>> check_stable_den("den", [[1.0, -1.5]])
    Traceback (most recent call last):
    ...
    ValueError: den: row 0 has a pole of modulus 1.5 (expected all poles strictly inside the unit circle; pass --allow-unstable (Python: allow_unstable=True) to override)
    """
    den = onp.atleast_2d(onp.asarray(den, dtype=float))
    for i, row in enumerate(den):
        if row[0] == 0.0:
            raise ValueError(f"{name}: row {i} has a zero leading coefficient (expected den[:, 0] != 0)")
        if allow_unstable or row.size < 2:
            continue
        rmax = float(onp.max(onp.abs(onp.roots(row)))) if onp.any(row[1:]) else 0.0
        if not rmax < 1.0:
            raise ValueError(
                f"{name}: row {i} has a pole of modulus {rmax:.6g} (expected all poles "
                "strictly inside the unit circle; pass --allow-unstable (Python: "
                "allow_unstable=True) to override)")


def check_tokens(name, tokens, vocab_size):
    """Integer token ids in [0, vocab_size).

    >>> check_tokens("tokens", [[0, 3]], 4).dtype.kind
    'i'
    >>> check_tokens("tokens", [[0, 4]], 4)
    Traceback (most recent call last):
    ...
    ValueError: tokens: id 4 out of range (expected 0 <= id < 4)
    """
    arr = onp.asarray(tokens)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: dtype {arr.dtype} (expected integer token ids)")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        bad = arr.min() if arr.min() < 0 else arr.max()
        raise ValueError(f"{name}: id {bad} out of range (expected 0 <= id < {vocab_size})")
    return arr.astype(onp.int64, copy=False)


def check_state_space(A, B, C, D, prefix=""):
    """Validate (A, B, C, D) shapes against each other: A (n, n), B (n, m), C (p, n),
    D (p, m); return them as float64 arrays. ``prefix`` names them in messages
    (e.g. "sigma_" -> "sigma_A").

    >>> [a.shape for a in check_state_space([[0.5]], [[1.0, 0.0]], [[1.0]], [[0.0, 0.0]])]
    [(1, 1), (1, 2), (1, 1), (1, 2)]
    >>> check_state_space([[0.5]], [[1.0]], [[1.0, 2.0]], [[0.0]], prefix="r_")
    Traceback (most recent call last):
    ...
    ValueError: r_C: expected shape (p, 1) to match r_A (1, 1), got (1, 2)
    """
    nA, nB, nC, nD = (prefix + k for k in "ABCD")
    A = check_array(nA, A, ndim=2)
    n = onp.shape(A)[0]
    if onp.shape(A)[1] != n:
        raise ValueError(f"{nA}: expected a square (n, n) matrix, got shape {onp.shape(A)}")
    B = check_array(nB, B, ndim=2)
    if onp.shape(B)[0] != n:
        raise ValueError(f"{nB}: expected shape ({n}, m) to match {nA} ({n}, {n}), got {onp.shape(B)}")
    m = onp.shape(B)[1]
    C = check_array(nC, C, ndim=2)
    if onp.shape(C)[1] != n:
        raise ValueError(f"{nC}: expected shape (p, {n}) to match {nA} ({n}, {n}), got {onp.shape(C)}")
    p = onp.shape(C)[0]
    D = check_array(nD, D, shape=(p, m))
    return A, B, C, D


def check_option(name, value, allowed):
    """``value`` one of ``allowed`` (an options tuple above), or a one-line ValueError.

    >>> check_option("gate", "zoh", GATES)
    'zoh'
    >>> check_option("gate", "exact", GATES)
    Traceback (most recent call last):
    ...
    ValueError: gate: 'exact' (expected one of 'euler', 'zoh')
    """
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} (expected one of {', '.join(map(repr, allowed))})")
    return value


def check_range(name, value):
    """An interval (lo, hi) of finite floats with 0 < lo < hi (a list from JSON accepted),
    returned as a tuple of floats; else a one-line ValueError naming ``name``.

    >>> check_range("delta_init", [0.01, 1])
    (0.01, 1.0)
    >>> check_range("delta_init", (1.0, 0.1))
    Traceback (most recent call last):
    ...
    ValueError: delta_init: (1.0, 0.1) (expected a pair (lo, hi) of finite numbers with 0 < lo < hi)
    """
    try:
        lo, hi = (float(v) for v in value)
        ok = bool(onp.isfinite(lo) and onp.isfinite(hi) and 0.0 < lo < hi)
    except (TypeError, ValueError):
        ok = False
    if isinstance(value, (str, bytes)) or not ok:
        raise ValueError(f"{name}: {value!r} (expected a pair (lo, hi) of finite numbers with "
                         "0 < lo < hi)")
    return lo, hi


def check_number(name, value, minimum=0.0, strict=False):
    """A finite float >= ``minimum`` (> with ``strict``; bools refused), returned as float;
    else a one-line ValueError naming ``name``.

    >>> check_number("weight_decay", 0.1)
    0.1
    >>> check_number("readout_scale", 0, strict=True)
    Traceback (most recent call last):
    ...
    ValueError: readout_scale: 0 (expected a finite number > 0.0)
    """
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    bad = isinstance(value, (bool, onp.bool_, str, bytes)) or not onp.isfinite(x)
    if bad or x < minimum or (strict and x == minimum):
        raise ValueError(f"{name}: {value!r} (expected a finite number {'>' if strict else '>='} "
                         f"{minimum})")
    return x


def check_length(name, L, minimum=1):
    """A plain int >= ``minimum`` (bools refused), returned as int.

    >>> check_length("L", 0)
    Traceback (most recent call last):
    ...
    ValueError: L: expected an integer >= 1, got 0
    """
    if isinstance(L, (bool, onp.bool_)) or not isinstance(L, (int, onp.integer)):
        raise TypeError(f"{name}: expected an int, got {type(L).__name__}")
    if L < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {L}")
    return int(L)


def check_u(u, m=None, what=None):
    """Inputs u (batch, L, m) with L >= 1 and, when given, m inputs (``what`` names the
    argument m comes from).

    >>> check_u(onp.ones((1, 0, 2)))
    Traceback (most recent call last):
    ...
    ValueError: u: shape (1, 0, 2) has no time steps (expected (batch, L, m), L >= 1)
    """
    u = check_array("u", u, ndim=3)
    shp = onp.shape(u)
    if shp[1] < 1:
        raise ValueError(f"u: shape {shp} has no time steps (expected (batch, L, m), L >= 1)")
    if m is not None and shp[2] != m:
        raise ValueError(f"u: expected shape (batch, L, {m})"
                         + (f" to match {what}" if what else "") + f", got {shp}")
    return u


def check_tf(num, den, proper=False, stable=False):
    """A transfer matrix: num (p, m, k), den (p, k_d), one common denominator per output
    row; 1-D num and den mean SISO. ``proper``: num (p, m, k) and den (p, k) of equal
    length (the FFT paths); ``stable``: every den row's poles inside |z| = 1. Returns
    float64 (num, den), not normalized.

    >>> [a.shape for a in check_tf([1.0, 0.5], [1.0, -0.5])]
    [(1, 1, 2), (1, 2)]
    """
    if onp.ndim(num) == 1 and not proper:
        num = check_array("num", num, ndim=1)[None, None, :]
        if onp.ndim(den) != 1:
            raise ValueError(f"den: expected 1 dimension with a 1-D (SISO) num, got shape {onp.shape(den)}")
        den = check_array("den", den, ndim=1)[None, :]
    else:
        num = check_array("num", num, ndim=3)
        den = check_array("den", den, ndim=2)
    p, m, kn = onp.shape(num)
    if proper:
        if p < 1 or m < 1 or kn < 1:
            raise ValueError(f"num: shape {onp.shape(num)} (expected (p, m, k) with p, m, k >= 1)")
        if onp.shape(den) != (p, kn):
            raise ValueError(
                f"den: expected shape ({p}, {kn}) to match num (p, m, k) = {onp.shape(num)}, got "
                f"{onp.shape(den)} (proper systems only: pad the shorter polynomial on the left)")
    else:
        if onp.shape(den)[0] != p:
            raise ValueError(f"den: expected {p} rows (one common denominator per output row of "
                             f"num {onp.shape(num)}), got shape {onp.shape(den)}")
        if kn == 0 or onp.shape(den)[1] == 0:
            raise ValueError("num, den: expected at least one coefficient, got an empty polynomial")
        if p == 0 or m == 0:
            raise ValueError(f"num: expected p >= 1 outputs and m >= 1 inputs, got shape {onp.shape(num)}")
    if stable:
        check_stable_den("den", onp.asarray(getval(den)))
    return num, den


def check_spectral_radius(name, A, fix="pass allow_unstable to override"):
    """Every eigenvalue of A strictly inside the unit circle (traced or empty A: skipped);
    ``fix`` tells the user what to do instead.

    >>> check_spectral_radius("A", [[1.5]])
    Traceback (most recent call last):
    ...
    ValueError: A: spectral radius 1.5 (expected all eigenvalues strictly inside the unit circle; pass allow_unstable to override)
    """
    if is_traced(A) or onp.size(A) == 0:
        return
    rho = float(onp.max(onp.abs(onp.linalg.eigvals(onp.asarray(A)))))
    if not rho < 1.0:
        raise ValueError(f"{name}: spectral radius {rho:.6g} (expected all eigenvalues strictly "
                         f"inside the unit circle; {fix})")


def check_residual_tf(sigma_num, sigma_den, r_num, r_den, allow_unstable=False):
    """Σ = (sigma_num (m, m, k), sigma_den (m, k)) and Σ_r = (r_num (1, m, k_r),
    r_den (1, k_r)) of Section 3.2.2, stable unless ``allow_unstable``; returns the four
    float64 arrays and m."""
    sigma_num = check_array("sigma_num", sigma_num, ndim=3)
    m = onp.shape(sigma_num)[0]
    k = onp.shape(sigma_num)[2]
    sigma_num = check_array("sigma_num", sigma_num, shape=(m, m, k))
    sigma_den = check_array("sigma_den", sigma_den, shape=(m, k))
    r_num = check_array("r_num", r_num, ndim=3)
    k_r = onp.shape(r_num)[2]
    r_num = check_array("r_num", r_num, shape=(1, m, k_r))
    r_den = check_array("r_den", r_den, shape=(1, k_r))
    for name, den in (("sigma_den", sigma_den), ("r_den", r_den)):
        if not is_traced(den):
            check_stable_den(name, den, allow_unstable=allow_unstable)
    return sigma_num, sigma_den, r_num, r_den, m


def check_residual_ss(arrs, allow_unstable=False):
    """Σ = (sigma_A, sigma_B, sigma_C, sigma_D) with m inputs and m outputs and
    Σ_r = (r_A, r_B, r_C, r_D) with m inputs and one output, in that order in ``arrs``;
    stable unless ``allow_unstable``. Returns (the eight arrays, m)."""
    sA, sB, sC, sD = check_state_space(*arrs[:4], prefix="sigma_")
    m = onp.shape(sB)[1]
    if onp.shape(sC)[0] != m:
        raise ValueError(f"sigma_C: expected {m} outputs (Σ is m x m), got shape {onp.shape(sC)}")
    rA, rB, rC, rD = check_state_space(*arrs[4:], prefix="r_")
    if onp.shape(rB)[1] != m or onp.shape(rC)[0] != 1:
        raise ValueError(f"r_B, r_C: expected Σ_r with {m} inputs and 1 output, got r_B "
                         f"{onp.shape(rB)} and r_C {onp.shape(rC)}")
    if not allow_unstable:
        check_spectral_radius("sigma_A", sA)
        check_spectral_radius("r_A", rA)
    return (sA, sB, sC, sD, rA, rB, rC, rD), m


def check_dt_limit(dt_limit):
    """(lo, hi) as floats from a dt clamp (mamba_ssm's ``dt_limit``), lo <= hi, no NaN;
    (0, inf) is no clamp. ValueError naming dt_limit otherwise.

    >>> check_dt_limit((0.0, float("inf")))
    (0.0, inf)
    """
    try:
        lo, hi = (float(dt_limit[0]), float(dt_limit[1]))
        ok = len(dt_limit) == 2 and not math.isnan(lo) and not math.isnan(hi) and lo <= hi
    except (TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        raise ValueError(f"dt_limit: {dt_limit!r} (expected a pair (lo, hi) with lo <= hi; "
                         "(0, inf) means no clamp)")
    return lo, hi
