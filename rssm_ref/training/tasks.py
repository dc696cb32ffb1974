"""The two synthetic tasks of Section 2.1, seeded and vectorized.

The paper's dictionary has N = 8 tokens, the trigger included (§2.1.1, §4.2): the
defaults here are 7 content tokens plus the trigger (induction) and 8 tokens (extended).

Induction head (Section 2.1.1, Fig. 1 left)
    Vocabulary: n content tokens 0..n−1 and one trigger token n (vocab size n + 1;
    default n = 7, so the dictionary has the paper's 8 tokens and 7 possible answers).
    Distribution: every position except two is an i.i.d. uniform content token; the
    trigger is put at a position p drawn uniformly from {0, …, L−3} and again at the last
    position L−1. The answer is the token at p + 1 (a uniform content token, never the
    trigger). The trigger appears exactly twice by construction.

Extended induction head (Section 2.1.2, Fig. 1 right)
    Vocabulary: n content tokens only (vocab size n, default 8); a fixed trigger *sequence* T of
    N_trig content tokens (default (0, 1, 2, 3), N_trig = 4).
    Distribution: i.i.d. uniform content tokens; T is written at positions p..p+N_trig−1
    with p uniform in {0, …, L − 2 N_trig − 1} and again as the last N_trig tokens; the
    answer is the token at p + N_trig. Accidental occurrences are excluded by rejection:
    a row is redrawn whole (new p, new tokens) until T occurs exactly twice, counting
    every window, overlapping ones included. The accepted rows therefore follow the
    uniform distribution conditioned on "exactly two occurrences, one ending at L−1 and
    one ending at or before L − N_trig − 2".

    Long sequences (``method``). A row holds about (L − N_trig − 1)/N^N_trig accidental
    occurrences (``expected_accidental``), so whole-row rejection needs about e^that
    draws per row: 4 at L = 4096 with the default trigger, 10^7 at L = 65536. There
    ``method="resample"`` builds the rows directly: p and the tokens are drawn as above,
    then only the free tokens (not the two planted triggers) of every accidental window
    are redrawn, round after round, until none is left. Each accidental window holds a
    free token (the planted triggers are at least one token apart), so this ends. Same
    support (exactly two occurrences, answer at p + N_trig), p exactly uniform, but not
    exactly the rejection distribution: rejection weights p by its number of valid
    fillings and rows are not uniform among the valid ones (exact for N_trig = 1, where
    each offending token is redrawn until it differs from the trigger). The difference
    is below the sampling noise where both can be measured: at L = 24, T = (0, 1),
    N = 8, 400 000 rows per method, the 192 per-position token frequencies differ by at
    most 0.0025 (two rejection runs with different seeds: 0.0021) and the answer's
    frequencies by at most 0.0011. ``method="auto"`` (the default) rejects whole rows
    whenever that is affordable (``expected_accidental <= REJECT_MAX_EXPECTED``, every
    length up to 8192 with the default trigger: Tables 1 and 2 are unchanged) and
    resamples windows only beyond.

Both generators take a ``numpy.random.Generator`` and are deterministic given its state.

Glossary (shapes)
-----------------
tokens (batch, L) int64;  targets (batch,) int64 in [0, N);  trigger_pos (batch,) = p

>>> rng = onp.random.default_rng(0)
>>> tok, tgt = induction_head(rng, batch=4, L=16)
>>> tok.shape, bool((tok[:, -1] == 7).all()), bool(((tok == 7).sum(1) == 2).all())
((4, 16), True, True)
"""
import numpy as onp

from rssm_ref.validation import check_tokens

__all__ = ["induction_head", "extended_induction_head", "count_occurrences", "TASKS",
           "vocab_size", "DEFAULT_TRIGGER", "DEFAULT_TOKENS", "expected_accidental",
           "extended_method", "REJECT_MAX_EXPECTED"]

DEFAULT_TRIGGER = (0, 1, 2, 3)
TASKS = ("induction", "extended")
# content tokens by default: the paper's dictionary of N = 8, the trigger included
DEFAULT_TOKENS = {"induction": 7, "extended": 8}
# extended task, method "auto": whole-row rejection while a row holds at most this many
# accidental trigger occurrences on average (about e^3 = 20 draws per accepted row)
REJECT_MAX_EXPECTED = 3.0
EXTENDED_METHODS = ("auto", "reject", "resample")
_MAX_ROUNDS = 10000
_RESAMPLE_BLOCK = 1 << 20      # tokens per block of rows built at once (method "resample")


def _check_sizes(batch, L, min_L):
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch: {batch!r} (expected a positive integer)")
    if int(L) != L or L < min_L:
        raise ValueError(f"L: {L!r} (expected an integer >= {min_L})")


def vocab_size(task, n_tokens=None):
    """Number of embeddings a task needs: n + 1 (induction: the trigger) or n; n defaults
    to ``DEFAULT_TOKENS[task]`` (the paper's dictionary of 8 either way).

    >>> vocab_size("induction"), vocab_size("extended"), vocab_size("induction", 8)
    (8, 8, 9)
    """
    if task not in TASKS:
        raise ValueError(f"task: {task!r} (expected 'induction' or 'extended')")
    n_tokens = DEFAULT_TOKENS[task] if n_tokens is None else n_tokens
    return n_tokens + 1 if task == "induction" else n_tokens


def induction_head(rng, batch, L, n_tokens=7, return_positions=False):
    """Induction-head sequences (Section 2.1.1).

    Returns tokens (batch, L) int64 with the trigger id ``n_tokens`` at a uniform
    position p in [0, L−3] and at L−1, targets (batch,) = tokens[p + 1]; with
    ``return_positions`` also p (batch,).

    >>> tok, tgt, p = induction_head(onp.random.default_rng(1), 3, 8, return_positions=True)
    >>> bool((tok[onp.arange(3), p + 1] == tgt).all())
    True
    """
    _check_sizes(batch, L, 3)
    trigger = n_tokens
    tokens = rng.integers(0, n_tokens, size=(batch, L))
    p = rng.integers(0, L - 2, size=batch)
    rows = onp.arange(batch)
    tokens[rows, p] = trigger
    tokens[:, -1] = trigger
    targets = tokens[rows, p + 1].copy()
    if return_positions:
        return tokens, targets, p
    return tokens, targets


def count_occurrences(tokens, trigger):
    """Occurrences of the sequence ``trigger`` in each row (every window, overlaps included).

    Shapes: tokens (batch, L), trigger (N_trig,) -> (batch,) int.

    >>> count_occurrences(onp.array([[1, 1, 1, 2]]), (1, 1)).tolist()
    [2]
    """
    tokens = onp.asarray(tokens)
    trig = onp.asarray(trigger)
    k = trig.size
    L = tokens.shape[1]
    if L < k:
        return onp.zeros(tokens.shape[0], dtype=int)
    windows = onp.lib.stride_tricks.sliding_window_view(tokens, k, axis=1)  # (batch, L-k+1, k)
    return (windows == trig).all(axis=2).sum(axis=1)


def expected_accidental(L, n_tokens, n_trig):
    """Mean number of accidental occurrences of an N_trig-token trigger in a row of the
    extended task: (L − N_trig − 1) windows besides the two planted ones, each the
    trigger with probability N^(−N_trig). Whole-row rejection accepts about e^(−that).

    >>> round(expected_accidental(65536, 8, 4), 2), round(expected_accidental(1024, 8, 4), 3)
    (16.0, 0.249)
    """
    return max(0, L - n_trig - 1) / float(n_tokens) ** n_trig


def extended_method(L, n_tokens=8, n_trig=4, method="auto"):
    """The construction ``extended_induction_head`` uses: "reject" or "resample"
    ("auto": reject while ``expected_accidental <= REJECT_MAX_EXPECTED``).

    >>> extended_method(1024), extended_method(16384), extended_method(1024, 8, 1)
    ('reject', 'resample', 'resample')
    """
    if method not in EXTENDED_METHODS:
        raise ValueError(f"method: {method!r} (expected one of {', '.join(EXTENDED_METHODS)})")
    if method != "auto":
        return method
    return "reject" if expected_accidental(L, n_tokens, n_trig) <= REJECT_MAX_EXPECTED else "resample"


def _resample_accidental(rng, t, q, trig, n_tokens):
    """Redraw the free tokens of every accidental occurrence of ``trig`` in the rows ``t``
    (planted at q..q+k−1 and L−k..L−1), round after round, until none is left (in place)."""
    L = t.shape[1]
    k = trig.size
    todo = onp.arange(t.shape[0])                 # rows that may hold an accidental window
    for _ in range(_MAX_ROUNDS):
        sub, qs = t[todo], q[todo]
        rows = onp.arange(todo.size)
        hits = sub[:, :L - k + 1] == trig[0]
        for j in range(1, k):
            hits &= sub[:, j:j + L - k + 1] == trig[j]
        hits[rows, qs] = False                     # the two planted occurrences stay
        hits[:, L - k] = False
        bad = hits.any(axis=1)
        if not bad.any():
            return t
        todo, sub, qs, hits = todo[bad], sub[bad], qs[bad], hits[bad]
        redraw = onp.zeros(sub.shape, dtype=bool)
        for j in range(k):
            redraw[:, j:j + L - k + 1] |= hits
        redraw[onp.arange(todo.size)[:, None], qs[:, None] + onp.arange(k)] = False
        redraw[:, L - k:] = False                  # only free tokens are redrawn
        sub[redraw] = rng.integers(0, n_tokens, size=int(redraw.sum()))
        t[todo] = sub
    raise RuntimeError(f"extended task: accidental trigger occurrences left after {_MAX_ROUNDS} "
                       "rounds of resampling")


def extended_induction_head(rng, batch, L, n_tokens=8, trigger=DEFAULT_TRIGGER,
                            return_positions=False, method="auto"):
    """Extended induction-head sequences (Section 2.1.2): a trigger *sequence*.

    Returns tokens (batch, L) int64, targets (batch,) = tokens[p + N_trig] with the
    trigger sequence at p..p+N_trig−1 and at L−N_trig..L−1, occurring exactly twice
    (rejection sampling of whole rows, or at long L resampling of the accidental windows:
    ``method`` "auto" | "reject" | "resample", see the module docstring); with
    ``return_positions`` also p (batch,).

    >>> tok, tgt = extended_induction_head(onp.random.default_rng(2), 5, 16)
    >>> count_occurrences(tok, DEFAULT_TRIGGER).tolist(), tok[:, -4:].tolist()[0]
    ([2, 2, 2, 2, 2], [0, 1, 2, 3])
    >>> tok, tgt = extended_induction_head(onp.random.default_rng(2), 2, 65536)  # resample
    >>> count_occurrences(tok, DEFAULT_TRIGGER).tolist()
    [2, 2]
    """
    trig = onp.asarray(trigger, dtype=onp.int64)
    k = trig.size
    if k < 1:
        raise ValueError("trigger: empty (expected a sequence of content tokens)")
    check_tokens("trigger", trig, n_tokens)
    _check_sizes(batch, L, 2 * k + 1)
    if extended_method(L, n_tokens, k, method) == "resample":
        if n_tokens < 2:
            raise ValueError(f"n_tokens: {n_tokens} (expected >= 2: with one token every "
                             "window is the trigger)")
        tokens = onp.empty((batch, L), dtype=onp.int64)
        p = onp.empty(batch, dtype=onp.int64)
        rows = max(1, _RESAMPLE_BLOCK // L)       # blocks of rows: fixed by L, not the machine
        for lo in range(0, batch, rows):
            n = min(rows, batch - lo)
            t = rng.integers(0, n_tokens, size=(n, L))
            q = rng.integers(0, L - 2 * k, size=n)
            t[onp.arange(n)[:, None], q[:, None] + onp.arange(k)] = trig
            t[:, L - k:] = trig
            tokens[lo:lo + n], p[lo:lo + n] = _resample_accidental(rng, t, q, trig, n_tokens), q
        targets = tokens[onp.arange(batch), p + k].copy()
        if return_positions:
            return tokens, targets, p
        return tokens, targets
    tokens = onp.empty((batch, L), dtype=onp.int64)
    p = onp.empty(batch, dtype=onp.int64)
    todo = onp.arange(batch)
    while todo.size:
        n = todo.size
        t = rng.integers(0, n_tokens, size=(n, L))
        q = rng.integers(0, L - 2 * k, size=n)          # p in {0, ..., L - 2k - 1}
        cols = q[:, None] + onp.arange(k)
        t[onp.arange(n)[:, None], cols] = trig
        t[:, L - k:] = trig
        tokens[todo], p[todo] = t, q
        # redraw whole rows that contain an accidental (possibly overlapping) occurrence
        todo = todo[count_occurrences(t, trig) != 2]
    targets = tokens[onp.arange(batch), p + k].copy()
    if return_positions:
        return tokens, targets, p
    return tokens, targets


def make_batch(task, rng, batch, L, n_tokens=None, trigger=DEFAULT_TRIGGER):
    """Dispatch on the task name: (tokens, targets); ``n_tokens`` None: the task's default
    (``DEFAULT_TOKENS``).

    >>> make_batch("extended", onp.random.default_rng(0), 2, 12)[0].shape
    (2, 12)
    """
    if task in DEFAULT_TOKENS and n_tokens is None:
        n_tokens = DEFAULT_TOKENS[task]
    if task == "induction":
        return induction_head(rng, batch, L, n_tokens)
    if task == "extended":
        return extended_induction_head(rng, batch, L, n_tokens, trigger)
    raise ValueError(f"task: {task!r} (expected 'induction' or 'extended')")
