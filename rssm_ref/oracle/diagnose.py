"""``diagnose``: which of the conventions the oracle knows a candidate's tensors follow.

A candidate that follows other conventions than its reference (mamba_ssm's Euler B and
"after" output against the paper's defaults, a forgotten skip D, the other layout)
fails ``verify`` with errors of order 1 from the first steps and no hint. ``diagnose``
recomputes the reference from the params and inputs embedded in the reference file
under every combination of

    lti               layout
    residual          gate (euler eq. (5), zoh Remark 3.1) x output (after: y(1..L), the
                      format's; before: y(0..L-1)) x layout
    selective, mamba  discretization (zoh, euler) x output (before, after) x D (with,
                      without; when the params hold D) x layout
    mamba-block       the layer itself, and each slip a port makes (rssm_ref.oracle.slips:
                      z and x swapped, the conv flipped, ...), one at a time, x layout
    ssd               the SSD core itself, and each slip a port makes (heads paired with
                      groups the wrong way, dt_bias twice, ...), one at a time, x layout
    mamba2-block      the Mamba-2 layer itself, and each slip a port makes (the in_proj
                      split, the conv, the core's slips of ssd, D, the gated norm, the
                      MLP part), one at a time, on the reference's own options

(layout: channel-last (batch, L, m) or channel-first (batch, m, L); ssd: channel-last
(batch, L, h, p) or heads-flat (batch, L, h·p); tried only where the candidate's shapes
fit), ranks them by the candidate's worst error (relative to max|T| of each tensor, as
``verify``), and runs ``verify`` on the best one at float64, float32, float16, bfloat16
in turn: the first precision that passes is the one it matches at. The report names the
conventions and the ``forward`` flags that reproduce them. A mamba-block, ssd or
mamba2-block candidate that matches a slip fails (exit 1) whatever the precision: the
advice names the slip and what to fix. The slipped layers are computed by the oracle's
emulation (``precision.mamba_block_scan(..., slip=)``, ``precision.ssd_scan(..., slip=)``,
``precision.mamba2_block_scan(..., slip=)``, whose core is ``ssd_scan``) in
float64, and ``verify`` reruns it in lower precisions, so a slip is matched at the
candidate's precision too.
Two rules keep a slip from being blamed wrongly: the layer itself comes first when it
passes at the claimed precision (a slip below that precision's resolution is not a
defect), and when nothing matches a slip is the closest only if its error on y is at most
SLIP_MARGIN times the layer's own.

Glossary
--------
Combo            dict of conventions, keys as ``verify.describe_reference`` (gate,
                 discretization, output, D, layout; path for lti/residual is kept;
                 mamba-block, ssd and mamba2-block add slip: "none" or a name of
                 ``slips.slips_of``)
DiagnoseReport   rows (every combo: worst rel_err, worst tensor), best, precision, advice
diagnose(reference, candidate) -> DiagnoseReport       (mappings of arrays)
diagnose_files(reference_path, candidate_path) -> DiagnoseReport

>>> import numpy
>>> from rssm_ref.oracle import mamba, forward
>>> P, U = mamba.random_params(m=3, n=2, seed=0), {"u": numpy.ones((1, 6, 3))}
>>> ref = forward.bundle(forward.resolve_options("mamba", discretization="zoh"), P, U,
...                      forward.compute("mamba", P, U, discretization="zoh"))
>>> cand = forward.compute("mamba", P, U)                 # euler, after: mamba_ssm's
>>> rep = diagnose(ref, {"y": cand["y"]})
>>> rep.best, rep.precision
({'discretization': 'euler', 'output': 'after', 'D': 'yes', 'layout': 'channel-last'}, 'float64')
>>> rep.rerun_flags
'--discretization euler'
"""
import dataclasses
import itertools
import json
import os
from typing import Optional

import numpy as onp

from rssm_ref.oracle import formats, forward
from rssm_ref.oracle.precision import emulate, PRECISIONS
from rssm_ref.oracle.slips import applies, mamba2_applies, slips_of, ssd_applies
from rssm_ref.oracle.verify import (candidate_precision, describe_reference, describe_text,
                                    missing_key_hint, verify)
from rssm_ref.tolerances import TINY
from rssm_ref.util.version import VERSION

# when nothing matches, a mismatch is blamed on a slip (the layers, ssd) only when the
# slip's row has at most this fraction of the layer's own row's error on y
SLIP_MARGIN = 0.5
# names for convention sets a user will recognise
KNOWN = {
    ("selective", "euler", "after"): "mamba_ssm's and mambapy's conventions",
    ("mamba", "euler", "after"): "mamba_ssm's and mambapy's conventions",
    ("selective", "zoh", "before"): "the paper's eqs. (2)-(3b)",
    ("mamba", "zoh", "before"): "the paper's eqs. (2)-(3b)",
}


# what a row without a slip is, in the report's words
_LAYER = {"mamba-block": "mamba_ssm's Mamba layer",
          "ssd": "mamba_ssm's mamba_chunk_scan_combined (Mamba-2's SSD core)",
          "mamba2-block": "mamba_ssm's Mamba2 layer"}
_LAYER_SHORT = {"mamba-block": "the Mamba layer", "ssd": "Mamba-2's SSD core",
                "mamba2-block": "the Mamba-2 layer"}
_APPLIES = {"ssd": ssd_applies, "mamba2-block": mamba2_applies}


def _grid(model, ref_conv, has_D, params=None, inputs=None, opts=None, keys=("y",)):
    """Every combination of conventions for ``model`` (dicts in describe_reference's keys)."""
    if model in _LAYER:
        # the layer's own conventions, then each slip alone on top of them (no pairs)
        slips = ["none"] + [s for s in slips_of(model)
                            if (_APPLIES[model](s, params, inputs, opts, keys)
                                if model in _APPLIES else applies(s, params))]
        return [dict(ref_conv, slip=s, layout=lay) for s in slips
                for lay in formats.model_layouts(model)]
    axes = {}
    if "path" in ref_conv:
        axes["path"] = [ref_conv["path"]]          # fft vs recurrent: not a convention
    if model == "residual":
        axes["gate"] = list(forward.GATES)
        axes["output"] = ["after", "before"]
    if model in ("selective", "mamba"):
        axes["discretization"] = list(forward.DISCRETIZATIONS)
        axes["output"] = list(forward.OUTPUTS)
        axes["D"] = ["yes", "no"] if has_D else ["no"]
    axes["layout"] = list(formats.model_layouts(model))
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(axes[k] for k in keys))]


def _label(model, combo):
    if model in _LAYER:
        slip = combo["slip"]
        what = (f"no slip: {_LAYER[model]}" if slip == "none"
                else f"slip: {slips_of(model)[slip].words}")
        return f"{what} (layout={combo['layout']})"
    parts = ", ".join(f"{k}={v}" for k, v in combo.items() if k != "path")
    known = KNOWN.get((model, combo.get("discretization"), combo.get("output")))
    if model == "residual":
        known = ("gate eq. (5)" if combo["gate"] == "euler" else "the ZOH gate of Remark 3.1") + \
            (", y(1..L)" if combo["output"] == "after" else ", y(0..L-1)")
    return parts + (f" ({known})" if known else "")


def rerun_flags(model, combo, ref_conv, ngroups=None):
    """The forward flags that reproduce ``combo`` (those that differ from the reference,
    plus the model's convention flags when any differs), and advice for D; heads-flat
    adds ``--ngroups``.

    >>> rerun_flags("selective", {"discretization": "euler", "output": "after", "D": "no",
    ...   "layout": "channel-last"}, {"discretization": "zoh", "output": "after", "D": "no",
    ...   "layout": "channel-last"})
    '--discretization euler'
    """
    flags = []
    for key in ("gate", "discretization", "output", "layout"):
        if key in combo and combo[key] != ref_conv.get(key):
            flags.append(f"--{key} {combo[key]}")
            if combo[key] == "heads-flat" and ngroups is not None:
                flags.append(f"--ngroups {ngroups}")
    return " ".join(flags)


@dataclasses.dataclass
class DiagnoseReport:
    """Every combination tried, the best one and the precision it matches at."""
    model: str
    reference_options: dict
    keys: list
    rows: list                      # [{"conventions", "label", "rel_err", "worst_tensor"}]
    best: Optional[dict]
    precision: Optional[str]
    rerun_flags: str
    advice: str
    unchecked: list
    reference: str = ""
    candidate: str = ""
    best_report: Optional[object] = None    # the VerifyReport of the best combo
    # the finest precision a match must reach to pass: --precision, or the candidate's dtype
    allowed_precision: str = "float64"
    precision_from: str = ""
    slip: Optional[str] = None      # the layers, ssd: the slip of the best row (None: none)

    @property
    def passed(self):
        """True when some combination matches at the precision the candidate may claim
        (its dtype's, or ``--precision``); a match found only at a coarser precision fails,
        and so does a match with a port's slip (mamba-block, mamba2-block, ssd)."""
        return (self.precision is not None and self.slip is None
                and PRECISIONS.index(self.precision) <= PRECISIONS.index(self.allowed_precision))

    def as_dict(self):
        return {"rssm_ref_version": VERSION,
                "reference": self.reference, "candidate": self.candidate, "model": self.model,
                "reference_options": self.reference_options, "keys": list(self.keys),
                "unchecked": list(self.unchecked), "passed": self.passed,
                "best": self.best, "precision": self.precision,
                "allowed_precision": self.allowed_precision,
                "precision_from": self.precision_from, "slip": self.slip,
                "rerun_flags": self.rerun_flags, "advice": self.advice,
                "rows": [dict(r, rel_err=_json_float(r["rel_err"])) for r in self.rows],
                "best_report": self.best_report.as_dict() if self.best_report else None}

    def to_json(self):
        return json.dumps(self.as_dict(), indent=1)

    def to_text(self):
        lines = [f"diagnose {self.candidate or 'candidate'} against {self.reference or 'reference'}",
                 f"reference: {describe_text(self.model, self.reference_options)}",
                 f"compared: {', '.join(self.keys)}"
                 + (f"; unchecked (not in the reference): "
                    f"{', '.join(u['name'] for u in self.unchecked)}" if self.unchecked else ""),
                 f"{'rel_err':>10}  {'worst tensor':<20} conventions"]
        for r in self.rows:
            mark = []
            if r["conventions"] == self.best:
                mark.append("best")
            if r.get("is_reference"):
                mark.append("the reference's")
            tail = f"   <- {', '.join(mark)}" if mark else ""
            lines.append(f"{r['rel_err']:>10.2e}  {r['worst_tensor']:<20} {r['label']}{tail}")
        if self.best_report is not None:
            lines.append("")
            for l in self.best_report.to_text().split("\n"):
                if l == "PASS" and self.slip:
                    what = "core" if self.model == "ssd" else "layer"
                    l = (f"PASS against the {what} recomputed with the slip {self.slip}, not "
                         "against the reference")
                if not l.startswith("which conventions"):
                    lines.append(l)
        lines.append("")
        lines.append(f"precision claimed: {self.allowed_precision} ({self.precision_from})")
        lines.append(self.advice)
        return "\n".join(lines)


def _json_float(x):
    x = float(x)
    return x if onp.isfinite(x) else ("inf" if x > 0 else "nan")


def _candidate_tensors(candidate, ref_out, allowed, where):
    """Float64 candidate tensors with keys in the reference; unchecked keys listed."""
    out, unchecked = {}, []
    for key, arr in candidate.items():
        if key == formats.OPTIONS_KEY or key.startswith((formats.PARAM_PREFIX,
                                                          formats.INPUT_PREFIX)):
            continue
        if key not in ref_out:
            if key in allowed:
                unchecked.append({"name": key, "reason": "not in the reference"})
                continue
            hint = missing_key_hint(key, ref_out, allowed, set())
            raise ValueError(f"{where}: key '{key}' is not in the reference and no output of "
                             f"this model (expected keys among {', '.join(sorted(allowed))})"
                             + (f"; {hint}" if hint else ""))
        arr = onp.asarray(arr)
        if arr.dtype.kind != "f":
            raise TypeError(f"{where}: key '{key}': dtype {arr.dtype} (expected a floating-point "
                            "array: float64, float32 or float16)")
        out[key] = arr.astype(onp.float64)
    if not out:
        raise ValueError(f"{where}: no tensor to compare with the reference (expected at least "
                         f"one of {', '.join(sorted(ref_out))})")
    return out, unchecked


def _rel(actual, desired):
    scale = max(float(onp.max(onp.abs(desired))) if desired.size else 0.0, TINY)
    d = onp.abs(actual - desired)
    d = onp.where(onp.isnan(d), onp.inf, d)
    return float(onp.max(d)) / scale if d.size else 0.0


def diagnose(reference, candidate, where=("reference", "candidate"), precisions=PRECISIONS,
             precision=None):
    """Try every convention combination; see the module docstring. Returns DiagnoseReport.

    ``reference``: mapping of a forward file; ``candidate``: mapping key -> array
    (keys among the reference's outputs; others the model can output are unchecked).
    ``precision``: the precision the candidate claims (``--precision``); None reads it from
    the candidate's dtypes as ``verify`` does. The report passes only when the best match
    holds at that precision or a finer one.
    Bad input (no comparable key, shapes that fit no layout) raises ValueError.

    >>> import numpy
    >>> from rssm_ref.oracle import mamba, forward
    >>> P, U = mamba.random_params(m=3, n=2, seed=0), {"u": numpy.ones((1, 6, 3))}
    >>> ref = forward.bundle(forward.resolve_options("mamba"), P, U, forward.compute("mamba", P, U))
    >>> y = forward.compute("mamba", P, U)["y"]
    >>> noisy = y * (1 + 1e-2 * numpy.random.default_rng(0).standard_normal(y.shape))
    >>> rep = diagnose(ref, {"y": noisy})              # float64 tensors, 1 % noise
    >>> rep.passed, rep.allowed_precision, rep.precision != "float64"
    (False, 'float64', True)
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} (expected one of {', '.join(PRECISIONS)})")
    opts, params, inputs, ref_out = formats.check_reference(reference, where=where[0])
    if precision is None:
        allowed, precision_from = candidate_precision(candidate, ref_out)
        precision_from = precision_from.split(";")[0] or "from the candidate's dtype float64"
    else:
        allowed, precision_from = precision, "given by --precision"
    model = opts["model"]
    ref_conv = describe_reference(opts, params)
    if model in _LAYER:
        ref_conv["slip"] = "none"
    cand, unchecked = _candidate_tensors(candidate, ref_out,
                                         formats.allowed_output_keys(model, params), where[1])
    dims = formats.layout_dims(model, inputs)
    # the model's own options, kept in every row (ssd's dt handling and chunk size; the
    # Mamba-2 layer's groups, norm, clamp, chunk size and step)
    kept = {}
    if model == "ssd":
        kept = dict(dt_softplus=bool(opts.get("dt_softplus")), dt_limit=formats.ssd_limit(opts),
                    chunk_size=opts.get("chunk_size"))
    if model == "mamba2-block":
        kept = dict(formats.mamba2_options(opts), chunk_size=opts.get("chunk_size"),
                    step=bool(opts.get("step")))
    keys = sorted(cand, key=lambda k: (k != "y", not k.startswith("grad_"), k))
    need_grads = any(k.startswith("grad_") for k in cand)
    need_inter = any(k in formats.SPECS[model]["intermediates"] for k in cand)
    rows, bundles, errors = [], {}, []
    for combo in _grid(model, ref_conv, "D" in params, params, inputs, opts, list(cand)):
        P = {k: v for k, v in params.items() if not (k == "D" and combo.get("D") == "no")}
        lay = combo["layout"]
        o = forward.resolve_options(model, path=opts.get("path"), gate=combo.get("gate"),
                                    discretization=combo.get("discretization"),
                                    output=combo.get("output"),
                                    allow_unstable=bool(opts.get("allow_unstable")),
                                    grads=need_grads, intermediates=need_inter,
                                    layout=lay, **dict(
                                        {"ngroups": dims["g"] if lay == "heads-flat" else None},
                                        **kept))
        # shapes in this layout must fit the candidate's (the layout is tried, not assumed)
        canon = {k: formats.from_layout(k, onp.empty(ref_out[k].shape, onp.int8),
                                        ref_conv["layout"], dims).shape for k in cand}
        if any(formats.layout_shape(k, canon[k], lay) != cand[k].shape for k in cand):
            continue
        if model == "ssd" and lay != ref_conv["layout"] and not any(
                formats.changes(k, len(canon[k]), other) for k in cand
                for other in (lay, ref_conv["layout"])):
            continue                # the candidate's tensors look alike in both: one row
        slip = combo.get("slip", "none")
        if slip == "none":
            out = forward.compute_checked(model, P, inputs, o)
        else:
            # the slipped layer: the emulation in float64, the tensors the candidate has
            with onp.errstate(all="ignore"):
                out = emulate(model, P, inputs, o, "float64", grads=need_grads, slip=slip)
            out = {k: v for k, v in out.items() if k == "y" or k in cand}
            if not all(onp.all(onp.isfinite(v)) for v in out.values()):
                continue                            # overflowed: not what a finite port computed
        if any(k not in out for k in cand):         # e.g. grad_D without D
            continue
        y_shape = onp.shape(out["y"])
        out = {k: formats.to_layout(k, v, lay) for k, v in out.items()}
        errs = {k: _rel(cand[k], out[k]) for k in cand}
        worst = max(errs, key=errs.get)
        U = dict(inputs)
        if need_grads and "dy" not in U:
            U["dy"] = onp.ones(y_shape)
        U = {k: formats.to_layout(k, v, lay) for k, v in U.items()}
        bundles[len(rows)] = forward.bundle(o, P, U, out)
        errors.append(errs)
        rows.append({"conventions": combo, "label": _label(model, combo),
                     "rel_err": errs[worst], "worst_tensor": worst,
                     "is_reference": combo == ref_conv})
    if not rows:
        k = next((k for k in keys if all(
            formats.layout_shape(k, formats.from_layout(k, onp.empty(ref_out[k].shape, onp.int8),
                                                        ref_conv["layout"], dims).shape, lay)
            != cand[k].shape for lay in formats.model_layouts(model))), keys[0])
        canon = formats.from_layout(k, onp.empty(ref_out[k].shape, onp.int8),
                                    ref_conv["layout"], dims).shape
        others = [f"{formats.layout_shape(k, canon, lay)} {lay}"
                  for lay in formats.model_layouts(model) if lay != ref_conv["layout"]]
        raise ValueError(f"{where[1]}: key '{k}': shape {cand[k].shape} fits neither layout "
                         f"(expected {ref_out[k].shape} as in the {ref_conv['layout']} "
                         f"reference" + (f", or {', '.join(others)}" if others else "") + ")")
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["rel_err"],
                                                   not rows[i]["is_reference"]))
    recomputed = (where[0] + " (recomputed)", where[1])

    def slip_of(i):
        s = rows[i]["conventions"].get("slip", "none")
        return None if s == "none" else s

    def first_precision(i):
        """(the finest precision at which row i passes, or None; the report shown)"""
        shown = None
        for p in precisions:
            rep = verify(bundles[i], cand, p, where=recomputed, slip=slip_of(i))
            if shown is None or PRECISIONS.index(p) <= PRECISIONS.index(allowed):
                shown = rep            # the table shown: the claimed precision's verdict
            if rep.passed:
                return p, shown
        return None, shown

    def to_front(i):
        order.remove(i)
        order.insert(0, i)

    plain = next((i for i in order if slip_of(i) is None), None)
    if slip_of(order[0]) and plain is not None and \
            verify(bundles[plain], cand, allowed, where=recomputed).passed:
        # a slip that changes the layer less than the candidate's precision resolves (a
        # small step size makes ZOH and Euler B alike) must not fail a correct candidate:
        # the layer itself, when it passes at the claimed precision, comes first
        to_front(plain)
    found, best_report = first_precision(order[0])
    on = "y" if "y" in cand else rows[plain]["worst_tensor"] if plain is not None else None
    if found is None and slip_of(order[0]) and plain is not None and \
            errors[order[0]][on] > SLIP_MARGIN * errors[plain][on]:
        # nothing matches: a slip (of the forward pass) is the closest explanation only
        # when it brings y clearly closer than the layer itself does; else the bug is
        # elsewhere (a wrong gradient beside a right y), best shown on the layer's row
        to_front(plain)
        found, best_report = first_precision(plain)
    rows_sorted = [rows[i] for i in order]
    best_i = order[0]
    best = rows[best_i]["conventions"]
    best_slip = slip_of(best_i)
    flags = rerun_flags(model, best, ref_conv, dims["g"] if dims else None)
    label = rows[best_i]["label"]
    coarser = found is not None and PRECISIONS.index(found) > PRECISIONS.index(allowed)
    precision = found
    if best_slip is not None and found is not None:
        slip = slips_of(model)[best_slip]
        advice = (f"FAIL: your tensors match {_LAYER_SHORT[model]} with a slip, "
                  f"{slip.words}, at {found} precision"
                  + (" (coarser than your tensors claim)" if coarser else "")
                  + f"; fix: {slip.fix}"
                  + (f"; and rerun forward with {flags}" if flags else ""))
    elif coarser:
        claim = (f"your {allowed} tensors" if precision_from.startswith("from")
                 else f"your tensors, claimed at {allowed} by --precision,")
        advice = (f"FAIL: {claim} agree only to {found} precision: a defect, or a computation "
                  f"done in lower precision (closest conventions: {label}; if you computed in "
                  f"{found}, rerun with --precision {found})")
    elif precision is None:
        known = "conventions or slips" if model in _LAYER else "conventions"
        advice = (f"no combination of the {known} the oracle knows matches: the closest is "
                  f"{label} with rel_err {rows[best_i]['rel_err']:.2e} at "
                  f"{rows[best_i]['worst_tensor']} (a bug beyond conventions; the table above "
                  "shows where it starts)")
    else:
        how = [f"with {flags}"] if flags else []
        if best.get("D") == "no" and ref_conv.get("D") == "yes":
            how.append("without the key 'D' in the params (your tensors leave out the skip "
                       "D u(t); or add it to your code)")
        if best == ref_conv:
            advice = (f"matches the reference's own conventions ({label}) at {precision} "
                      f"precision: verify --precision {precision} passes")
        else:
            advice = f"matches {label} at {precision} precision; rerun forward {' and '.join(how)}"
    return DiagnoseReport(model, ref_conv, keys, rows_sorted, best, precision, flags, advice,
                          unchecked, best_report=best_report, allowed_precision=allowed,
                          precision_from=precision_from, slip=best_slip)


def diagnose_files(reference_path, candidate_path, precision=None):
    """Load both files (allow_pickle=False) and ``diagnose``; errors name the file and key.

    >>> diagnose_files("/nonexistent/O.npz", "C.npz")
    Traceback (most recent call last):
    ...
    ValueError: /nonexistent/O.npz: no such file (expected a .npz reference file)
    """
    ref = formats.load_npz(reference_path, "reference")
    cand = formats.load_npz(candidate_path, "candidate")
    rep = diagnose(ref, cand, where=(os.fspath(reference_path), os.fspath(candidate_path)),
                   precision=precision)
    rep.reference, rep.candidate = os.fspath(reference_path), os.fspath(candidate_path)
    if rep.best_report is not None:
        rep.best_report.candidate = os.fspath(candidate_path)
        rep.best_report.reference = os.fspath(reference_path) + " recomputed"
    return rep
