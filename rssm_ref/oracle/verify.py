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
import json
import os
from typing import List, Optional

import numpy as onp

from rssm_ref.oracle import formats
from rssm_ref.oracle.precision import PRECISIONS, emulate
from rssm_ref.tolerances import TINY, TOLERANCES

# stochastic-rounding reruns added to the round-to-nearest one (seeds 0..N-1): enough to
# see the spread of equally good rounding orders, cheap next to a candidate's own run.
STOCHASTIC_RUNS = 3
# an oracle error this large (relative) means the precision cannot represent the case
# (e.g. a pole at 0.999 in bfloat16): the verdict is then reported with a note.
UNRESOLVED = 0.1


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

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["worst_index"] = list(self.worst_index)
        for k in ("max_abs", "rel", "oracle_rel", "threshold"):
            d[k] = _json_float(d[k])
        return d


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

    @property
    def passed(self):
        return all(t.passed for t in self.tensors)

    def as_dict(self):
        return {"reference": self.reference, "candidate": self.candidate,
                "precision": self.precision, "factor": self.factor, "floor": self.floor,
                "passed": self.passed, "model": self.model, "options": dict(self.options),
                "tensors": [t.as_dict() for t in self.tensors],
                "unchecked": [dict(u) for u in self.unchecked]}

    def to_json(self):
        return json.dumps(self.as_dict(), indent=1)

    def to_text(self):
        # the name column fits the longest name (mamba's grad_dt_proj.weight)
        w = max([14] + [len(t.name) + 2 for t in self.tensors])
        ws = max([18] + [len(str(tuple(t.shape))) + 2 for t in self.tensors])
        wi = max([16] + [len(str(tuple(t.worst_index))) + 2 for t in self.tensors])
        lines = [f"verify {self.candidate or 'candidate'} against {self.reference or 'reference'}"
                 f" at precision {self.precision}: pass when rel_err <= {self.factor:g} x "
                 f"oracle_err + {self.floor:.3g}",
                 f"reference: {describe_text(self.model, self.options)}",
                 f"{'tensor':<{w}}{'shape':<{ws}}{'max_abs':>11}{'rel_err':>11}{'oracle_err':>11}"
                 f"{'threshold':>11}  {'worst_index':<{wi}}{'first_bad_t':>11}  verdict"]
        for t in self.tensors:
            fb = "-" if t.first_bad_t is None else str(t.first_bad_t)
            lines.append(f"{t.name:<{w}}{str(tuple(t.shape)):<{ws}}{t.max_abs:>11.3e}{t.rel:>11.3e}"
                         f"{t.oracle_rel:>11.3e}{t.threshold:>11.3e}  {str(tuple(t.worst_index)):<{wi}}"
                         f"{fb:>11}  {'ok' if t.passed else 'MISMATCH'}{(' ' + t.note) if t.note else ''}")
        for u in self.unchecked:
            lines.append(f"{u['name']:<{w}}unchecked: {u['reason']}")
        bad = sum(not t.passed for t in self.tensors)
        lines.append("PASS" if not bad else f"FAIL: {bad} of {len(self.tensors)} tensors mismatch")
        if bad and self.model in ("residual", "selective", "mamba"):
            lines.append(f"which conventions do your tensors follow? rssm-ref diagnose --reference "
                         f"{self.reference or 'O.npz'} --candidate {self.candidate or 'C.npz'}")
        return "\n".join(lines)


def describe_reference(opts, params):
    """The reference's conventions that apply to its model, as a dict for the report:
    path (lti, residual), gate and output (residual), discretization and output
    (selective, mamba), D ("yes"/"no": the skip D u, selective and mamba), layout.

    >>> describe_reference({"model": "selective", "discretization": "euler",
    ...                     "output": "after"}, {"A": 0})
    {'discretization': 'euler', 'output': 'after', 'D': 'no', 'layout': 'channel-last'}
    """
    from rssm_ref.oracle.forward import DEFAULTS
    model = opts.get("model")
    out = {}
    if model in ("lti", "residual"):
        out["path"] = opts.get("path") or "recurrent"
    for key, default in DEFAULTS.get(model, {}).items():
        out[key] = opts.get(key) or default
    if model in ("selective", "mamba"):
        out["D"] = "yes" if "D" in params else "no"
    out["layout"] = opts.get("layout") or "channel-last"
    return out


def describe_text(model, options):
    """'model mamba (discretization euler, output after, D yes, layout channel-first)'."""
    inner = ", ".join(f"{k} {v}" for k, v in options.items())
    return f"model {model or '?'}" + (f" ({inner})" if inner else "")


def check_candidate(arrays, ref_outputs, where="candidate", allowed=None,
                    layout="channel-last"):
    """The candidate's comparable tensors as float64, and the keys left unchecked.

    Returns ``(tensors, unchecked)``. Any float dtype is accepted (it is the candidate's
    precision); embedded ``param__*``/``input__*``/``options_json`` keys (a forward file
    used as candidate) are ignored. A key the model can output (``allowed``: grad_*,
    intermediates) but the reference lacks is listed in ``unchecked`` with the rerun
    that adds it; a key no forward file can hold is bad input (a typo must not pass
    silently). NaN/inf are *not* refused here: they are a numerical verdict.
    """
    out, unchecked = {}, []
    allowed = set(ref_outputs) if allowed is None else set(allowed) | set(ref_outputs)
    inter = {k for spec in formats.SPECS.values() for k in spec["intermediates"]}
    for key, arr in arrays.items():
        if key == formats.OPTIONS_KEY or key.startswith(formats.PARAM_PREFIX) or \
                key.startswith(formats.INPUT_PREFIX):
            continue
        if key not in ref_outputs:
            hint = ("rerun forward with --grads" if key.startswith("grad_") else
                    "rerun forward with --intermediates" if key in inter else "")
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
            other = "channel-first" if layout == "channel-last" else "channel-last"
            flipped = formats.layout_shape(key, formats.from_layout(
                key, onp.empty(want, dtype=onp.int8), layout).shape, other)
            hint = (f"; it has the {other} layout: rerun forward with --layout {other}"
                    if arr.shape == tuple(flipped) and flipped != want else "")
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
           factor=None, floor=None):
    """Compare ``candidate`` tensors with a forward/golden ``reference`` at ``precision``.

    ``reference``: mapping of a forward output file (outputs + embedded params, inputs,
    options); ``candidate``: mapping key -> array with keys among the reference's
    outputs. ``factor``/``floor``: the threshold factor × oracle_err + floor (default
    TOLERANCES["verify_factor"] and TOLERANCES["verify_floor_<precision>"]); the report
    states the values used. Returns a VerifyReport. Bad input raises ValueError/TypeError.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} (expected one of {', '.join(PRECISIONS)})")
    opts, params, inputs, ref_out = formats.check_reference(reference, where=where[0])
    layout = opts.get("layout") or "channel-last"
    cand, unchecked = check_candidate(candidate, ref_out, where=where[1], layout=layout,
                                      allowed=formats.allowed_output_keys(opts["model"], params))
    need_grads = any(k.startswith("grad_") for k in cand)
    # the oracle's own error in this precision: round-to-nearest, and the worst of a few
    # stochastically rounded runs (other rounding orders; float64 has one run); emulate
    # works in (batch, L, ...), the reference file in its layout
    seeds = [None] + ([] if precision == "float64" else list(range(STOCHASTIC_RUNS)))
    runs = [{k: formats.to_layout(k, v, layout) for k, v in
             emulate(opts["model"], params, inputs, opts, precision, grads=need_grads,
                     seed=s).items()}
            for s in seeds]
    factor = TOLERANCES["verify_factor"] if factor is None else _positive("factor", factor)
    floor = TOLERANCES["verify_floor_" + precision] if floor is None else _positive("floor", floor)
    reports = []
    for key in _order(cand):
        ref = ref_out[key]
        max_abs, rel, worst, scale, diff = _rel(cand[key], ref)
        oracle_rel = max(_rel(run[key], ref)[1] for run in runs)
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
        passed = bool(rel <= threshold)
        first_bad = None
        t_ax = formats.time_axis(key, diff.ndim, layout)
        if not passed and t_ax is not None:
            per_t = onp.max(onp.moveaxis(diff, t_ax, 0).reshape(diff.shape[t_ax], -1),
                            axis=1) / scale
            bad = onp.flatnonzero(per_t > threshold)
            first_bad = int(bad[0]) if bad.size else None
        reports.append(TensorReport(key, tuple(ref.shape), max_abs, rel, worst, oracle_rel,
                                    threshold, passed, first_bad, note))
    return VerifyReport(precision, factor, floor, reports, model=opts["model"],
                        options=describe_reference(opts, params), unchecked=unchecked)


def verify_files(reference_path, candidate_path, precision="float64"):
    """Load both files (allow_pickle=False) and ``verify``; errors name the file and key.

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

    def to_json(self):
        return json.dumps({"precision": self.precision, "passed": self.passed,
                           "skipped": self.skipped,
                           "cases": {k: r.as_dict() for k, r in self.cases.items()}}, indent=1)

    def to_text(self):
        lines = []
        for name, rep in self.cases.items():
            worst = max(rep.tensors, key=lambda t: t.rel / t.threshold if t.threshold else 0)
            lines.append(f"{name:<36} {'PASS' if rep.passed else 'FAIL':<5} worst {worst.name}: "
                         f"rel_err {worst.rel:.3e} vs threshold {worst.threshold:.3e}")
        for name in self.skipped:
            lines.append(f"{name:<36} skipped (no candidate file {name}.npz)")
        nbad = sum(not r.passed for r in self.cases.values())
        lines.append(f"{'PASS' if not nbad else 'FAIL'}: {len(self.cases) - nbad} of "
                     f"{len(self.cases)} cases pass at precision {self.precision}"
                     f"{f', {len(self.skipped)} skipped' if self.skipped else ''}")
        return "\n".join(lines)


def verify_golden(golden_dir, candidates_dir, precision="float64"):
    """Verify ``candidates_dir/<case>.npz`` against every case of a golden suite.

    The suite's checksums are checked first (a tampered suite is refused with
    ValueError). Cases without a candidate file are listed as skipped; a candidate file
    that matches no case, or no candidate at all, is bad input.
    """
    from rssm_ref.oracle import golden
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
    precision: str = "float64"


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
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision: {config.precision!r} (expected one of "
                         f"{', '.join(PRECISIONS)})")
    if files:
        return verify_files(config.reference, config.candidate, config.precision)
    return verify_golden(config.golden, config.candidates, config.precision)
