"""``verify``: judge a candidate's tensors against the float64 oracle, in the candidate's precision.

For every tensor T the candidate holds (``y``, intermediates, ``grad_*``):

    err_c(T)   = max |T_candidate - T_reference| / max |T_reference|        (rel_err)
    err_o(T)   = the same for the oracle rerun in emulated precision P
                 (rssm_ref.oracle.precision: the sequential algorithm, every result
                 rounded to P), the worst of the round-to-nearest run and
                 STOCHASTIC_RUNS stochastically rounded runs (other rounding orders)
    threshold  = TOLERANCES["verify_factor"] * err_o(T) + TOLERANCES["verify_floor_" + P]
    pass       <=>  err_c(T) <= threshold   (NaN or inf in the candidate never passes)

so a float32 candidate is not held to float64, and a float64 candidate is held to
~1e-12 (its err_o is a few ulps). For sequence tensors (time on axis 1) the report
gives the first time step t whose error max_{other axes}|ΔT[:, t]| / max|T_ref| leaves
the threshold: where a scan bug starts.

Glossary
--------
TensorReport   one tensor's figures;  VerifyReport  all tensors + verdict
verify(reference, candidate, precision) -> VerifyReport   (mappings of arrays)
verify_files(reference_path, candidate_path, precision) -> VerifyReport
verify_golden(golden_dir, candidates_dir, precision) -> SuiteReport

>>> import numpy
>>> from rssm_ref.oracle.forward import compute, bundle, resolve_options
>>> P = {"num": numpy.array([[[1.0, 0.2]]]), "den": numpy.array([[1.0, -0.9]])}
>>> U = {"u": numpy.random.default_rng(0).standard_normal((1, 50, 1))}
>>> ref = bundle(resolve_options("lti"), P, U, compute("lti", P, U))
>>> verify(ref, {"y": ref["y"].astype(numpy.float32)}, "float32").passed
True
>>> verify(ref, {"y": ref["y"].astype(numpy.float32)}, "float64").passed
False
"""
import dataclasses
import difflib
import json
import os
from typing import List, Optional

import numpy as onp

from rssm_ref.oracle import formats, golden
from rssm_ref.oracle.forward import DEFAULTS
from rssm_ref.oracle.precision import emulate, PRECISIONS
from rssm_ref.tolerances import TINY, TOLERANCES
from rssm_ref.util.invocation import prog
from rssm_ref.util.version import VERSION

# stochastic-rounding reruns added to the round-to-nearest one (seeds 0..N-1): enough to
# see the spread of equally good rounding orders, cheap next to a candidate's own run.
STOCHASTIC_RUNS = 3
# an oracle error this large (relative) means the precision cannot represent the case
# (e.g. a pole at 0.999 in bfloat16): the verdict is then reported with a note.
UNRESOLVED = 0.1
# a near miss (err_c within NEAR_MISS x the threshold) is not failed on a few samples:
# up to MORE_RUNS further stochastic runs (in batches of STOCHASTIC_RUNS) look for the
# tail of the oracle's own error. Ill-conditioned cases (a residual gate that flips on
# one rounding error) have heavy-tailed errors that 3 samples miss about a third of the
# time (docs/verify.md); a wrong convention fails by orders of magnitude and never reruns.
NEAR_MISS = 10.0
MORE_RUNS = 12
# INCONCLUSIVE: a tensor whose threshold admits a candidate of zeros, or of twice the
# reference (both have rel_err exactly 1), cannot fail a wrong candidate: the check
# says nothing (see docs/verify.md). Threshold >= TRIVIAL_REL_ERR on any tensor with a
# nonzero reference makes the verdict INCONCLUSIVE (exit 1), unless a tensor mismatches.
TRIVIAL_REL_ERR = 1.0
# the precision a candidate's dtype stands for when --precision is not given
DTYPE_PRECISION = {"float64": "float64", "float32": "float32", "float16": "float16"}


@dataclasses.dataclass
class TensorReport:
    """Figures for one tensor (errors relative to max|reference|)."""
    name: str
    shape: tuple
    max_abs: float
    rel: float
    worst_index: tuple
    oracle_rel: float
    threshold: float
    passed: bool
    first_bad_t: Optional[int] = None
    note: str = ""
    # the threshold admits a candidate of zeros / of twice the reference (TRIVIAL_REL_ERR)
    inconclusive: bool = False

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["worst_index"] = list(self.worst_index)
        for k in ("max_abs", "rel", "oracle_rel", "threshold"):
            d[k] = _json_float(d[k])
        return d


def missing_key_hint(key, ref_outputs, allowed, inter):
    """What to do about a candidate key the reference lacks: the nearest expected key when
    it looks like a typo (a reference with gradients has no use for --grads), else the
    rerun that adds it.

    >>> missing_key_hint("grad_x_proj_weight", {"y": 0, "grad_x_proj.weight": 0}, set(), set())
    "did you mean 'grad_x_proj.weight'?"
    >>> missing_key_hint("grad_u", {"y": 0}, {"grad_u"}, set())
    'rerun forward with --grads'
    """
    if key in ("grad_conv_state", "grad_ssm_state") and key not in ref_outputs:
        return (f"rerun forward with --grads and an initial {key[5:]} in the inputs (the "
                "gradient of a state exists only for a state given)")
    known = sorted(set(ref_outputs) | set(allowed))
    near = difflib.get_close_matches(key, [k for k in known if k != key], n=1, cutoff=0.75)
    has_grads = any(k.startswith("grad_") for k in ref_outputs)
    if near and (key not in allowed or (key.startswith("grad_") and has_grads)):
        return f"did you mean '{near[0]}'?"
    if key.startswith("grad_"):
        return "rerun forward with --grads" if not has_grads else ""
    return "rerun forward with --intermediates" if key in inter else ""


def _json_float(x):
    x = float(x)
    return x if onp.isfinite(x) else ("inf" if x > 0 else "nan" if x != x else "-inf")


@dataclasses.dataclass
class VerifyReport:
    """All tensors of one candidate and the verdict."""
    precision: str
    factor: float
    floor: float
    tensors: List[TensorReport]
    reference: str = ""
    candidate: str = ""
    # the reference's model and conventions (``describe_reference``), and the candidate's
    # keys that the reference lacks: [{"name": key, "reason": ...}], reported, not judged
    model: str = ""
    options: dict = dataclasses.field(default_factory=dict)
    unchecked: list = dataclasses.field(default_factory=list)
    # where the precision came from: "" (given), or the candidate's dtype it was read from
    precision_from: str = ""
    # a float64 candidate that fails but would pass at float32: one line saying so
    hint: str = ""

    @property
    def inconclusive(self):
        """Every tensor passes, but some threshold admits a trivial candidate."""
        return all(t.passed for t in self.tensors) and any(t.inconclusive for t in self.tensors)

    @property
    def passed(self):
        return all(t.passed for t in self.tensors) and not self.inconclusive

    @property
    def verdict(self):
        return "PASS" if self.passed else "INCONCLUSIVE" if self.inconclusive else "FAIL"

    def why_inconclusive(self):
        """One line: which thresholds admit a trivial candidate, and what would help."""
        loose = [t for t in self.tensors if t.inconclusive]
        worst = max(t.threshold for t in loose)
        better = {"bfloat16": "float32", "float16": "float32", "float32": "float64"}
        return (f"INCONCLUSIVE: at precision {self.precision} the threshold of "
                f"{', '.join(t.name for t in loose)} (up to {worst:.2g}) is >= 1, so a "
                "candidate of zeros or of twice the reference would pass; make the check "
                "meaningful with a shorter or better-conditioned case (smaller L, poles "
                "further inside |z| = 1) or a higher precision"
                + (f" (--precision {better[self.precision]})" if self.precision in better
                   else ""))

    def as_dict(self):
        return {"rssm_ref_version": VERSION,
                "reference": self.reference, "candidate": self.candidate,
                "precision": self.precision, "precision_from": self.precision_from,
                "factor": self.factor, "floor": self.floor,
                "passed": self.passed, "verdict": self.verdict,
                "reason": self.why_inconclusive() if self.inconclusive else self.hint,
                "model": self.model, "options": dict(self.options),
                "tensors": [t.as_dict() for t in self.tensors],
                "unchecked": [dict(u) for u in self.unchecked]}

    def to_json(self):
        return json.dumps(self.as_dict(), indent=1)

    def to_text(self):
        # the name column fits the longest name (mamba's grad_dt_proj.weight)
        w = max([14] + [len(t.name) + 2 for t in self.tensors])
        ws = max([18] + [len(str(tuple(t.shape))) + 2 for t in self.tensors])
        wi = max([16] + [len(str(tuple(t.worst_index))) + 2 for t in self.tensors])
        src = f" ({self.precision_from})" if self.precision_from else ""
        lines = [f"verify {self.candidate or 'candidate'} against {self.reference or 'reference'}"
                 f" at precision {self.precision}{src}: pass when rel_err <= {self.factor:g} x "
                 f"oracle_err + {self.floor:.3g}",
                 f"reference: {describe_text(self.model, self.options)}",
                 f"{'tensor':<{w}}{'shape':<{ws}}{'max_abs':>11}{'rel_err':>11}{'oracle_err':>11}"
                 f"{'threshold':>11}  {'worst_index':<{wi}}{'first_bad_t':>11}  verdict"]
        for t in self.tensors:
            fb = "-" if t.first_bad_t is None else str(t.first_bad_t)
            lines.append(f"{t.name:<{w}}{str(tuple(t.shape)):<{ws}}{t.max_abs:>11.3e}{t.rel:>11.3e}"
                         f"{t.oracle_rel:>11.3e}{t.threshold:>11.3e}  {str(tuple(t.worst_index)):<{wi}}"
                         f"{fb:>11}  {_tensor_verdict(t)}{(' ' + t.note) if t.note else ''}")
        for u in self.unchecked:
            lines.append(f"{u['name']:<{w}}unchecked: {u['reason']}")
        bad = sum(not t.passed for t in self.tensors)
        lines.append(self.why_inconclusive() if self.inconclusive else "PASS" if not bad else
                     f"FAIL: {bad} of {len(self.tensors)} tensors mismatch")
        if self.hint:
            lines.append(self.hint)
        if bad and self.model in ("residual", "selective", "mamba", "mamba-block", "ssd",
                                  "mamba2-block"):
            lines.append(f"which conventions do your tensors follow? {prog()} diagnose --reference "
                         f"{self.reference or 'O.npz'} --candidate {self.candidate or 'C.npz'}")
        return "\n".join(lines)


def _tensor_verdict(t):
    return "MISMATCH" if not t.passed else "inconclusive" if t.inconclusive else "ok"


def describe_reference(opts, params):
    """The reference's conventions that apply to its model, as a dict for the report:
    path (lti, residual), gate and output (residual), discretization and output
    (selective, mamba), D ("yes"/"no": the skip D u, selective and mamba), dt_softplus,
    dt_limit and chunk_size (ssd), ngroups or d_state, norm_before_gate, norm_group_size,
    eps, dt_limit, chunk_size and step (mamba2-block), layout.

    >>> describe_reference({"model": "selective", "discretization": "euler",
    ...                     "output": "after"}, {"A": 0})
    {'discretization': 'euler', 'output': 'after', 'D': 'no', 'layout': 'channel-last'}
    """
    model = opts.get("model")
    out = {}
    if model in ("lti", "residual"):
        out["path"] = opts.get("path") or "recurrent"
    for key, default in DEFAULTS.get(model, {}).items():
        out[key] = opts.get(key) or default
    if model in ("selective", "mamba"):
        out["D"] = "yes" if "D" in params else "no"
    if model == "ssd":
        lo, hi = formats.ssd_limit(opts)
        out.update(dt_softplus="yes" if opts.get("dt_softplus") else "no",
                   dt_limit=f"({lo:g}, {hi:g})",
                   chunk_size=opts.get("chunk_size") or formats.SSD_CHUNK_SIZE)
    if model == "mamba2-block":
        kw = formats.mamba2_options(opts)
        lo, hi = kw["dt_limit"]
        out.update({k: kw[k] for k in ("ngroups", "d_state") if kw[k] is not None})
        out.update(norm="yes" if "norm.weight" in params else "no",
                   norm_before_gate="yes" if kw["norm_before_gate"] else "no",
                   norm_group_size=kw["norm_group_size"] or "d_ssm / ngroups",
                   eps=f"{kw['eps']:g}", dt_limit=f"({lo:g}, {hi:g})",
                   chunk_size=opts.get("chunk_size") or formats.SSD_CHUNK_SIZE)
        if opts.get("step"):
            out["step"] = "yes"
    out["layout"] = opts.get("layout") or "channel-last"
    return out


def describe_text(model, options):
    """'model mamba (discretization euler, output after, D yes, layout channel-first)'."""
    inner = ", ".join(f"{k} {v}" for k, v in options.items())
    return f"model {model or '?'}" + (f" ({inner})" if inner else "")


def check_candidate(arrays, ref_outputs, where="candidate", allowed=None,
                    layout="channel-last", model=None, dims=None):
    """The candidate's comparable tensors as float64, and the keys left unchecked.

    Returns ``(tensors, unchecked)``. Any float dtype is accepted (it is the candidate's
    precision); embedded ``param__*``/``input__*``/``options_json`` keys (a forward file
    used as candidate) are ignored. A key the model can output (``allowed``: grad_*,
    intermediates) but the reference lacks is listed in ``unchecked`` with the rerun
    that adds it; a key no forward file can hold is bad input (a typo must not pass
    silently). NaN/inf are *not* refused here: they are a numerical verdict. A shape
    that another layout of ``model`` gives is named with the rerun (``dims``: heads-flat's
    splits, ``formats.layout_dims``).
    """
    out, unchecked = {}, []
    allowed = set(ref_outputs) if allowed is None else set(allowed) | set(ref_outputs)
    inter = {k for spec in formats.SPECS.values() for k in spec["intermediates"]}
    for key, arr in arrays.items():
        if key == formats.OPTIONS_KEY or key.startswith(formats.PARAM_PREFIX) or \
                key.startswith(formats.INPUT_PREFIX):
            continue
        if key not in ref_outputs:
            hint = missing_key_hint(key, ref_outputs, allowed, inter)
            if key in allowed:
                unchecked.append({"name": key, "reason": f"not in the reference ({hint})"})
                continue
            raise ValueError(f"{where}: key '{key}' is not in the reference and no output of "
                             f"this model (expected keys among {', '.join(sorted(allowed))})"
                             + (f"; {hint}" if hint else ""))
        arr = onp.asarray(arr)
        if arr.dtype.kind != "f":
            raise TypeError(f"{where}: key '{key}': dtype {arr.dtype} (expected a floating-point "
                            "array: float64, float32 or float16)")
        want = ref_outputs[key].shape
        if arr.shape != want:
            canon = formats.from_layout(key, onp.empty(want, dtype=onp.int8), layout, dims).shape
            hint = ""
            for other in (formats.model_layouts(model) if model else formats.LAYOUTS):
                flipped = formats.layout_shape(key, canon, other)
                if other != layout and arr.shape == tuple(flipped) != want:
                    more = f" --ngroups {dims['g']}" if other == "heads-flat" and dims else ""
                    hint = f"; it has the {other} layout: rerun forward with --layout {other}{more}"
            raise ValueError(f"{where}: key '{key}': shape {arr.shape} (expected "
                             f"{want}, as in the {layout} reference){hint}")
        out[key] = arr.astype(onp.float64)
    if not out:
        left = (f": {', '.join(u['name'] for u in unchecked)} "
                f"{unchecked[0]['reason']}" if unchecked else "")
        raise ValueError(f"{where}: no tensor to compare with the reference{left}; expected at "
                         f"least one of {', '.join(sorted(ref_outputs))}")
    return out, unchecked


def _order(keys):
    rank = {"y": 0}
    return sorted(keys, key=lambda k: (rank.get(k, 2 if k.startswith("grad_") else 1), k))


def _rel(actual, desired):
    scale = max(float(onp.max(onp.abs(desired))) if desired.size else 0.0, TINY)
    diff = onp.abs(actual - desired)
    if diff.size == 0:
        return 0.0, 0.0, (), scale, diff
    diff = onp.where(onp.isnan(diff), onp.inf, diff)
    flat = int(onp.argmax(diff))
    worst = tuple(int(i) for i in onp.unravel_index(flat, diff.shape))
    max_abs = float(diff.flat[flat])
    return max_abs, max_abs / scale, worst, scale, diff


def _positive(name, value):
    """A user's threshold override: a finite number >= 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: {value!r} (expected a number >= 0)") from None
    if not (onp.isfinite(v) and v >= 0):
        raise ValueError(f"{name}: {value!r} (expected a finite number >= 0)")
    return v


def verify(reference, candidate, precision="float64", where=("reference", "candidate"),
           factor=None, floor=None, slip=None):
    """Compare ``candidate`` tensors with a forward/golden ``reference`` at ``precision``.

    ``reference``: mapping of a forward output file (outputs + embedded params, inputs,
    options); ``candidate``: mapping key -> array with keys among the reference's
    outputs. ``factor``/``floor``: the threshold factor × oracle_err + floor (default
    TOLERANCES["verify_factor"] and TOLERANCES["verify_floor_<precision>"]); the report
    states the values used. ``precision=None`` reads it from the candidate's dtypes
    (``candidate_precision``). The verdict (``VerifyReport.verdict``) is PASS, FAIL, or
    INCONCLUSIVE when every tensor passes but a threshold is >= TRIVIAL_REL_ERR (a zeros
    candidate would pass). Returns a VerifyReport. Bad input raises ValueError/TypeError.
    ``slip`` (mamba-block, mamba2-block, ssd; for ``diagnose``): the reference was computed with that
    port slip (rssm_ref.oracle.slips), and the oracle is rerun with it; never read from a
    file.
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} (expected one of {', '.join(PRECISIONS)})")
    opts, params, inputs, ref_out = formats.check_reference(reference, where=where[0])
    layout = opts.get("layout") or "channel-last"
    precision_from = ""
    if precision is None:
        precision, precision_from = candidate_precision(candidate, ref_out)
    cand, unchecked = check_candidate(candidate, ref_out, where=where[1], layout=layout,
                                      allowed=formats.allowed_output_keys(opts["model"], params),
                                      model=opts["model"],
                                      dims=formats.layout_dims(opts["model"], inputs))
    need_grads = any(k.startswith("grad_") for k in cand)
    factor = TOLERANCES["verify_factor"] if factor is None else _positive("factor", factor)
    floor = TOLERANCES["verify_floor_" + precision] if floor is None else _positive("floor", floor)
    cand_err = {key: _rel(cand[key], ref_out[key]) for key in cand}

    # the oracle's own error in this precision: round-to-nearest, and the worst of a few
    # stochastically rounded runs (other rounding orders; float64 has one run); emulate
    # works in (batch, L, ...), the reference file in its layout
    oracle = {key: 0.0 for key in cand}

    def add_runs(seeds):
        for s in seeds:
            run = emulate(opts["model"], params, inputs, opts, precision, grads=need_grads,
                          seed=s, slip=slip)
            for key in cand:
                err = _rel(formats.to_layout(key, run[key], layout), ref_out[key])[1]
                oracle[key] = max(oracle[key], err) if onp.isfinite(err) else float("inf")

    def near_miss(key):
        thr = factor * oracle[key] + floor
        return onp.isfinite(oracle[key]) and thr < cand_err[key][1] <= NEAR_MISS * thr

    add_runs([None] + ([] if precision == "float64" else list(range(STOCHASTIC_RUNS))))
    n_runs = 1 + (0 if precision == "float64" else STOCHASTIC_RUNS)
    while precision != "float64" and n_runs < 1 + STOCHASTIC_RUNS + MORE_RUNS and \
            any(near_miss(k) for k in cand):
        add_runs(range(n_runs - 1, n_runs - 1 + STOCHASTIC_RUNS))
        n_runs += STOCHASTIC_RUNS

    reports = []
    for key in _order(cand):
        ref = ref_out[key]
        max_abs, rel, worst, scale, diff = cand_err[key]
        oracle_rel = oracle[key]
        note = ""
        if not onp.isfinite(oracle_rel):
            # the emulated oracle overflowed in this precision: no error to scale by
            note = f"(oracle overflowed in {precision}; threshold is the floor)"
            oracle_rel = float("inf")
            threshold = floor
        else:
            threshold = factor * oracle_rel + floor
            if oracle_rel >= UNRESOLVED:
                note = f"(the oracle's own {precision} error is {oracle_rel:.1e}: {precision} cannot resolve this case)"
            elif n_runs > 1 + STOCHASTIC_RUNS:
                note = f"(oracle_err: the worst of {n_runs} rounding orders)"
        passed = bool(rel <= threshold)
        # a candidate of zeros and one of twice the reference both have rel_err 1 (when
        # the reference is not all zeros): a threshold that admits them cannot fail
        trivial = float(onp.max(onp.abs(ref))) > 0 and threshold >= TRIVIAL_REL_ERR
        first_bad = None
        t_ax = formats.time_axis(key, diff.ndim, layout)
        if not passed and t_ax is not None:
            per_t = onp.max(onp.moveaxis(diff, t_ax, 0).reshape(diff.shape[t_ax], -1),
                            axis=1) / scale
            bad = onp.flatnonzero(per_t > threshold)
            first_bad = int(bad[0]) if bad.size else None
        reports.append(TensorReport(key, tuple(ref.shape), max_abs, rel, worst, oracle_rel,
                                    threshold, passed, first_bad, note, inconclusive=trivial))
    described = describe_reference(opts, params)
    if slip is not None:
        described["slip"] = slip
    rep = VerifyReport(precision, factor, floor, reports, model=opts["model"],
                       options=described, unchecked=unchecked, precision_from=precision_from)
    if precision == "float64" and not rep.passed and \
            max(t.rel for t in reports) < FLOAT32_LOOKALIKE:
        # a float64 file whose errors are float32-sized: was it computed in float32?
        as32 = verify(reference, candidate, "float32", where=where, slip=slip)
        if as32.passed:
            rep.hint = ("hint: every tensor would pass at --precision float32: the errors "
                        "look like float32 rounding (a float32 computation saved as "
                        "float64?); if so, verify with --precision float32")
    return rep


# a failing float64 candidate whose worst error is below this is also checked at float32
# (errors of float32 rounding are ~1e-7..1e-4; a bug costs more)
FLOAT32_LOOKALIKE = 1e-3


def candidate_precision(candidate, ref_out):
    """(precision, note) read from the candidate's dtypes when --precision is not given:
    the lowest precision among its float tensors (float16 < float32 < float64).

    >>> import numpy
    >>> candidate_precision({"y": numpy.zeros(2, numpy.float32)}, {"y": None})
    ('float32', "from the candidate's dtype float32; --precision overrides")
    """
    dts = sorted({onp.asarray(v).dtype.name for k, v in candidate.items()
                  if k in ref_out and onp.asarray(v).dtype.kind == "f"},
                 key=lambda d: onp.dtype(d).itemsize)
    if not dts or dts[0] not in DTYPE_PRECISION:
        return "float64", ""
    prec = DTYPE_PRECISION[dts[0]]
    if prec == "float64":
        return prec, ""
    return prec, f"from the candidate's dtype {dts[0]}; --precision overrides"


def verify_files(reference_path, candidate_path, precision=None):
    """Load both files (allow_pickle=False) and ``verify``; errors name the file and key.
    ``precision=None``: the candidate's dtype (``candidate_precision``).

    >>> verify_files("/nonexistent/O.npz", "C.npz")
    Traceback (most recent call last):
    ...
    ValueError: /nonexistent/O.npz: no such file (expected a .npz reference file)
    """
    ref = formats.load_npz(reference_path, "reference")
    cand = formats.load_npz(candidate_path, "candidate")
    rep = verify(ref, cand, precision,
                 where=(os.fspath(reference_path), os.fspath(candidate_path)))
    rep.reference, rep.candidate = os.fspath(reference_path), os.fspath(candidate_path)
    return rep


@dataclasses.dataclass
class SuiteReport:
    """``verify --golden``: one VerifyReport per case that has a candidate."""
    precision: str
    cases: dict
    skipped: list

    @property
    def passed(self):
        return all(r.passed for r in self.cases.values())

    @property
    def verdict(self):
        """FAIL if a case mismatches, else INCONCLUSIVE if a case is, else PASS."""
        verdicts = {r.verdict for r in self.cases.values()}
        return "FAIL" if "FAIL" in verdicts else "INCONCLUSIVE" if "INCONCLUSIVE" in \
            verdicts else "PASS"

    def to_json(self):
        return json.dumps({"rssm_ref_version": VERSION,
                           "precision": self.precision, "passed": self.passed,
                           "verdict": self.verdict, "skipped": self.skipped,
                           "cases": {k: r.as_dict() for k, r in self.cases.items()}}, indent=1)

    def to_text(self):
        lines = []
        for name, rep in self.cases.items():
            worst = max(rep.tensors, key=lambda t: t.rel / t.threshold if t.threshold else 0)
            lines.append(f"{name:<36} {rep.verdict:<5} worst {worst.name}: "
                         f"rel_err {worst.rel:.3e} vs threshold {worst.threshold:.3e}"
                         + (f" (precision {rep.precision}, {rep.precision_from})"
                            if rep.precision_from else ""))
            if rep.inconclusive:
                lines.append(f"{'':<36} {rep.why_inconclusive()}")
        for name in self.skipped:
            lines.append(f"{name:<36} skipped (no candidate file {name}.npz)")
        npass = sum(r.passed for r in self.cases.values())
        ninc = sum(r.inconclusive for r in self.cases.values())
        prec = self.precision or "each candidate's dtype"
        lines.append(f"{self.verdict}: {npass} of {len(self.cases)} cases pass at precision "
                     f"{prec}" + (f", {ninc} inconclusive" if ninc else "")
                     + (f", {len(self.skipped)} skipped" if self.skipped else ""))
        return "\n".join(lines)


def verify_golden(golden_dir, candidates_dir, precision=None):
    """Verify ``candidates_dir/<case>.npz`` against every case of a golden suite.

    The suite's checksums are checked first (a tampered suite is refused with
    ValueError). Cases without a candidate file are listed as skipped; a candidate file
    that matches no case, or no candidate at all, is bad input.
    """
    manifest = golden.read_manifest(golden_dir)
    cdir = os.fspath(candidates_dir)
    if not os.path.isdir(cdir):
        raise ValueError(f"{cdir}: no such directory (expected a directory of <case>.npz "
                         "candidate files)")
    names = [c["case"] for c in manifest["cases"]]
    found = sorted(f for f in os.listdir(cdir) if f.endswith(".npz"))
    unknown = [f for f in found if f[:-4] not in names]
    if unknown:
        raise ValueError(f"{os.path.join(cdir, unknown[0])}: matches no case of the golden suite "
                         f"(expected <case>.npz with case among {', '.join(names)})")
    if not found:
        raise ValueError(f"{cdir}: no candidate files (expected <case>.npz for cases among "
                         f"{', '.join(names)})")
    cases, skipped = {}, []
    for name in names:
        cpath = os.path.join(cdir, name + ".npz")
        if not os.path.exists(cpath):
            skipped.append(name)
            continue
        cases[name] = verify_files(golden.case_path(golden_dir, name, "reference"), cpath,
                                   precision)
    return SuiteReport(precision, cases, skipped)


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    """``verify``: either reference + candidate files, or golden + candidates directories."""
    reference: Optional[str] = None
    candidate: Optional[str] = None
    golden: Optional[str] = None
    candidates: Optional[str] = None
    precision: Optional[str] = None     # None: the candidate's dtype (float32, float16, float64)


def run_verify(config):
    """Dispatch a VerifyConfig: a VerifyReport (files) or a SuiteReport (golden suite).

    >>> run_verify(VerifyConfig(reference="O.npz"))
    Traceback (most recent call last):
    ...
    ValueError: verify: expected --reference with --candidate, or --golden with --candidates
    """
    files = config.reference is not None or config.candidate is not None
    suite = config.golden is not None or config.candidates is not None
    if files == suite or (files and None in (config.reference, config.candidate)) or \
            (suite and None in (config.golden, config.candidates)):
        raise ValueError("verify: expected --reference with --candidate, or --golden with "
                         "--candidates")
    if config.precision is not None and config.precision not in PRECISIONS:
        raise ValueError(f"precision: {config.precision!r} (expected one of "
                         f"{', '.join(PRECISIONS)})")
    if files:
        return verify_files(config.reference, config.candidate, config.precision)
    return verify_golden(config.golden, config.candidates, config.precision)
