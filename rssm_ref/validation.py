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

>>> check_array("u", [[1.0, 2.0]], ndim=2).shape
(1, 2)
>>> check_array("u", [1.0, float("nan")])
Traceback (most recent call last):
...
ValueError: u: contains NaN or inf (expected finite float64 values)
"""
import numpy as onp


def _is_traced(x):
    # autograd's ArrayBox: shape checks only, values are not ours to inspect.
    return type(x).__name__ == "ArrayBox"


def _on_other_backend(x):
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
    if _is_traced(x):
        arr = x
        kind = "f"
    elif _on_other_backend(x):
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
    if not _is_traced(arr) and not onp.all(onp.isfinite(arr)):
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
