"""``golden``: a frozen suite of named reference cases, and ``golden --check``.

Layout of a suite directory::

    DIR/manifest.json                 cases, options, shapes, sha256 of every file, versions
    DIR/<case>/params.npz             the case's params (docs/formats.md)
    DIR/<case>/inputs.npz             u (or tokens) and the cotangent dy
    DIR/<case>/reference.npz          forward output: y, intermediates, grad_*, embedded
                                      params/inputs/options

``check_golden`` trusts nothing it checks: it re-derives the manifest's own checksum
(``manifest_sha256`` over its canonical JSON, and the file must be byte-for-byte that
canonical JSON, line endings aside: a CRLF checkout of manifest.json is accepted), the
sha256 of every listed file, then recomputes every case in float64 and compares each
stored tensor with
``TOLERANCES["golden_recompute"]``. Any tampering (one flipped byte anywhere) raises
ValueError (CLI exit 2); a numeric disagreement with intact checksums is a failed
report (CLI exit 1). Files the manifest does not list (a README, a .gitkeep: suites live
in version control) are not checked and not trusted; they are reported, never fatal.

Glossary
--------
CASES                      list of GoldenCase (name, model, options, builder)
write_golden(out_dir) -> manifest dict;  read_manifest(dir) -> manifest (checked)
check_golden(dir) -> GoldenCheckReport
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable, Optional

import numpy as onp

from rssm_ref.mamba2_block import mamba2_block_params
from rssm_ref.mamba_block import mamba_block_params
from rssm_ref.oracle import formats, forward, sample
from rssm_ref.tolerances import rel_err, TOLERANCES
from rssm_ref.util.paths import check_outputs, umask
from rssm_ref.util.version import versions
from rssm_ref.xp.backend import get_backend_name, namespace

SUITE_FORMAT = "rssm-ref-golden/1"
FILES = ("params.npz", "inputs.npz", "reference.npz")


@dataclasses.dataclass(frozen=True)
class GoldenCase:
    """One named case: ``build(rng) -> (params, inputs)`` and the forward options."""
    name: str
    model: str
    description: str
    build: Callable
    path: str = "recurrent"
    gate: Optional[str] = None
    discretization: Optional[str] = None
    output: Optional[str] = None
    layer: tuple = ()     # the layer's own options as (name, value) pairs (mamba2-block's)

    def options(self):
        return forward.resolve_options(self.model, path=self.path, gate=self.gate,
                                       discretization=self.discretization, output=self.output,
                                       grads=True, intermediates=True, **dict(self.layer))


def _inputs(rng, model, params, batch, L, tokens=False):
    return sample.init_inputs(model, params, seed=int(rng.integers(2**31)), batch=batch, L=L,
                              dy=True, tokens=tokens)


def _siso_tf(rng):
    den = sample.den_from_poles([0.999, 0.6])[None, :]
    num = onp.array([[[0.3, -0.2, 0.05]]])
    P = {"num": num, "den": den}
    return P, _inputs(rng, "lti", P, 1, 4096)


def _siso_ss(rng):
    A, B, C, D = sample.ss_from_poles(rng, [0.999, 0.6], m=1, p=1)
    P = {"A": A, "B": B, "C": C, "D": D}
    return P, _inputs(rng, "lti", P, 1, 4096)


def _mimo_tf_repeated(rng):
    c = 0.9 * onp.exp(0.5j)
    den = onp.stack([sample.den_from_poles([0.95, 0.95, 0.95, 0.3]),
                     sample.den_from_poles([c, onp.conj(c), c, onp.conj(c)])])
    num = rng.standard_normal((2, 3, 5)) * 0.3 ** onp.arange(5)
    P = {"num": num, "den": den}
    return P, _inputs(rng, "lti", P, 2, 512)


def _mimo_ss_jordan(rng):
    c = 0.8 * onp.exp(1j)
    A, B, C, D = sample.ss_from_poles(rng, [0.97, 0.97, 0.97, c, onp.conj(c)], m=2, p=3,
                                      jordan=True)
    P = {"A": A, "B": B, "C": C, "D": D}
    return P, _inputs(rng, "lti", P, 2, 512)


def _residual(form, tokens=False):
    def build(rng):
        P = sample.init_params("residual", seed=int(rng.integers(2**31)), form=form, m=2,
                               order=3, order_r=2, vocab=5 if tokens else None)
        return P, _inputs(rng, "residual", P, 2, 128, tokens=tokens)
    return build


def _selective(rng):
    P = sample.init_params("selective", seed=int(rng.integers(2**31)), m=3, n=4)
    # larger steps than init's default, so that A_t, B_t are far from I and 0 and the
    # ZOH and Euler conventions differ visibly
    P["delta_bias"] = P["delta_bias"] + 2.0
    return P, _inputs(rng, "selective", P, 2, 64)


def _mamba(rng):
    """mamba_ssm's selective scan under its state_dict names, dt_rank (3) far from
    ceil(m / 16), larger steps than init's so that exp(ΔA) is far from 1."""
    seed = int(rng.integers(2**31))
    P = sample.init_params("mamba", seed=seed, m=6, n=4)
    g = onp.random.default_rng(seed + 1)
    P["x_proj.weight"] = g.standard_normal((3 + 2 * 4, 6)) / onp.sqrt(6)
    P["dt_proj.weight"] = g.standard_normal((6, 3)) / onp.sqrt(3)
    P["dt_proj.bias"] = P["dt_proj.bias"] + 2.0
    return P, _inputs(rng, "mamba", P, 2, 64)


def _mamba_block(W, states):
    def build(rng):
        seed = int(rng.integers(2**31))
        P = mamba_block_params(d_model=4, d_state=4, d_conv=W, dt_rank=2, seed=seed,
                               bias=True)
        U = _inputs(rng, "mamba-block", P, 2, 48)
        if states:
            E, n = P["A_log"].shape
            g = onp.random.default_rng(seed + 1)
            U["conv_state"] = g.standard_normal((2, E, W))
            U["ssm_state"] = g.standard_normal((2, E, n))
        return P, U
    return build


def _mamba2_block(rng):
    """A Mamba-2 layer with g = 2 groups of 2 heads, d_mlp = 0 and the gated norm, from
    given conv_state and ssm_state; dt_bias + 1 for steps where exp(dt A) is far from 1."""
    seed = int(rng.integers(2**31))
    P = mamba2_block_params(d_model=4, d_state=3, d_conv=4, headdim=2, ngroups=2, seed=seed,
                            bias=True)
    P["dt_bias"] = P["dt_bias"] + 1.0
    U = _inputs(rng, "mamba2-block", P, 2, 40)
    g = onp.random.default_rng(seed + 1)
    U["conv_state"] = g.standard_normal((2, P["conv1d.weight"].shape[0], 4))
    U["ssm_state"] = g.standard_normal((2, 4, 2, 3))
    return P, U


CASES = [
    GoldenCase("lti_siso_tf_pole0999_L4096", "lti",
               "SISO transfer function, poles 0.999 and 0.6, L=4096, FFT path", _siso_tf,
               path="fft"),
    GoldenCase("lti_siso_ss_pole0999_L4096", "lti",
               "SISO state space, poles 0.999 and 0.6, L=4096, recurrent path", _siso_ss),
    GoldenCase("lti_mimo_tf_repeated_poles", "lti",
               "2x3 transfer matrix, triple real pole 0.95 and a repeated complex pair",
               _mimo_tf_repeated),
    GoldenCase("lti_mimo_ss_jordan", "lti",
               "3x2 state space with a 3x3 Jordan block at 0.97, FFT path", _mimo_ss_jordan,
               path="fft"),
    GoldenCase("residual_tf_euler", "residual", "Residual SSM, TF form, gate eq. (5), FFT path",
               _residual("tf"), path="fft", gate="euler"),
    GoldenCase("residual_tf_zoh", "residual", "Residual SSM, TF form, ZOH gate (Remark 3.1)",
               _residual("tf"), gate="zoh"),
    GoldenCase("residual_ss_euler", "residual", "Residual SSM, SS form, gate eq. (5)",
               _residual("ss"), gate="euler"),
    GoldenCase("residual_ss_zoh", "residual", "Residual SSM, SS form, ZOH gate, FFT path",
               _residual("ss"), path="fft", gate="zoh"),
    GoldenCase("residual_tf_euler_tokens", "residual",
               "Residual SSM on token ids through an embedding", _residual("tf", tokens=True),
               gate="euler"),
]
for _d in ("zoh", "euler"):
    for _o in ("before", "after"):
        CASES.append(GoldenCase(f"selective_{_d}_{_o}", "selective",
                                f"Selective SSM eqs. (2)-(4), B by {_d.upper()}, y read {_o} "
                                "the state update", _selective, discretization=_d, output=_o))
CASES += [
    GoldenCase("mamba_scan_dt_rank3", "mamba",
               "mamba_ssm's selective scan (A_log, x_proj, dt_proj, D), dt_rank 3, Euler B, "
               "y after the update", _mamba),
    GoldenCase("mamba_block_W4_biases", "mamba-block",
               "a whole Mamba-1 layer (in_proj, conv1d W=4, scan, gate, out_proj, with biases), "
               "zero initial states", _mamba_block(4, False)),
    GoldenCase("mamba_block_W3_initial_states", "mamba-block",
               "a Mamba-1 layer with W=3, continuing from given conv_state and ssm_state",
               _mamba_block(3, True)),
    GoldenCase("mamba2_block_g2_norm", "mamba2-block",
               "a whole Mamba-2 layer (in_proj, conv1d W=4, SSD with 2 groups of 2 heads, "
               "gated RMSNorm per group, out_proj, with biases), from given states, chunks "
               "of 16 over L=40", _mamba2_block, layer=(("ngroups", 2), ("chunk_size", 16))),
]


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True) + "\n"


def case_path(golden_dir, case, which):
    """Path of ``which`` ("params", "inputs", "reference") of ``case`` in a suite."""
    return os.path.join(os.fspath(golden_dir), case, which + ".npz")


def build_case(case, seed=0):
    """(params, inputs, outputs, options) of one case, computed in float64."""
    rng = onp.random.default_rng([seed, sum(map(ord, case.name))])
    params, inputs = case.build(rng)
    opts = case.options()
    params, sizes = formats.check_params(case.model, params, where=case.name, options=opts)
    inputs, _ = formats.check_inputs(case.model, inputs, sizes, where=case.name)
    outputs = forward.compute_checked(case.model, params, inputs, opts)
    return params, inputs, outputs, opts


def write_golden(out_dir, cases=None, seed=0):
    """Generate the suite into ``out_dir`` (absent or empty), atomically; returns the manifest.

    >>> import tempfile, os
    >>> d = os.path.join(tempfile.mkdtemp(), "g")
    >>> m = write_golden(d, cases=[c for c in CASES if c.name == "selective_zoh_before"])
    >>> [c["case"] for c in m["cases"]], check_golden(d).passed
    (['selective_zoh_before'], True)
    """
    out_dir = os.fspath(out_dir)
    check_outputs([], folders=[("--out", out_dir)])
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ValueError(f"--out: {out_dir} already exists and is not an empty directory "
                         "(expected a new directory for the golden suite)")
    # a symlink to an empty folder: the suite goes into the folder it points to
    target = os.path.realpath(out_dir) if os.path.isdir(out_dir) else os.path.abspath(out_dir)
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise ValueError(f"{out_dir}: parent directory {parent} does not exist (expected an "
                         "existing directory)")
    cases = CASES if cases is None else cases
    tmp = tempfile.mkdtemp(prefix=".golden-tmp-", dir=parent)
    try:
        entries = []
        for case in cases:
            params, inputs, outputs, opts = build_case(case, seed)
            cdir = os.path.join(tmp, case.name)
            os.mkdir(cdir)
            formats.save_npz_atomic(os.path.join(cdir, "params.npz"), params)
            formats.save_npz_atomic(os.path.join(cdir, "inputs.npz"), inputs)
            formats.save_npz_atomic(os.path.join(cdir, "reference.npz"),
                                    forward.bundle(opts, params, inputs, outputs))
            shapes = {k: list(onp.shape(v)) for d in (params, inputs, outputs)
                      for k, v in d.items()}
            entries.append({
                "case": case.name, "model": case.model, "description": case.description,
                "form": next(iter(formats.param_form(case.model, params).values())),
                "options": opts, "shapes": shapes,
                "sha256": {f: _sha256(os.path.join(cdir, f)) for f in FILES},
            })
        manifest = {"format": SUITE_FORMAT, "versions": versions(), "seed": seed,
                    "tolerance_key": "golden_recompute", "cases": entries}
        manifest["manifest_sha256"] = hashlib.sha256(_canonical(manifest).encode()).hexdigest()
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="ascii") as fh:
            fh.write(_canonical(manifest))
        os.chmod(tmp, 0o777 & ~umask())     # mkdtemp makes 0700
        if os.path.isdir(target):
            os.rmdir(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def unlisted_files(golden_dir, manifest):
    """Relative paths under the suite that the manifest does not list (files and empty
    folders), sorted: reported by ``golden --check``, never checked or used.

    >>> unlisted_files("/nonexistent", {"cases": []})
    []
    """
    gdir = os.fspath(golden_dir)
    listed = {"manifest.json"} | {os.path.join(c["case"], f) for c in manifest["cases"]
                                  for f in FILES}
    extra = []
    for root, dirs, files in os.walk(gdir):
        for f in files + [d for d in dirs if not os.listdir(os.path.join(root, d))]:
            rel = os.path.relpath(os.path.join(root, f), gdir)
            if rel not in listed:
                extra.append(rel)
    return sorted(extra)


def read_manifest(golden_dir):
    """The suite's manifest after checking its own checksum and every listed file's sha256.

    Raises ValueError naming the file on any discrepancy: unparsable or non-canonical
    manifest (CRLF line endings are accepted), wrong ``manifest_sha256``, a missing or
    altered listed file. Unlisted files are not an error (see ``unlisted_files``).
    """
    gdir = os.fspath(golden_dir)
    mpath = os.path.join(gdir, "manifest.json")
    if not os.path.isdir(gdir):
        raise ValueError(f"{gdir}: no such directory (expected a golden suite written by "
                         "`golden --out`)")
    if not os.path.isfile(mpath):
        raise ValueError(f"{mpath}: no such file (expected the manifest of a golden suite "
                         "written by `golden --out`)")
    with open(mpath, "rb") as fh:
        raw = fh.read().replace(b"\r\n", b"\n")   # a CRLF checkout is the same manifest
    try:
        manifest = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{mpath}: not valid JSON (expected the manifest written by "
                         "`golden --out`; the file is tampered or truncated)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SUITE_FORMAT:
        raise ValueError(f"{mpath}: key 'format' is not {SUITE_FORMAT!r} (expected a manifest "
                         "written by `golden --out`)")
    if raw != _canonical(manifest).encode():
        raise ValueError(f"{mpath}: bytes differ from the canonical JSON of its content (expected "
                         "an unmodified manifest; the file is tampered)")
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if manifest.get("manifest_sha256") != hashlib.sha256(_canonical(body).encode()).hexdigest():
        raise ValueError(f"{mpath}: key 'manifest_sha256' does not match the manifest's content "
                         "(expected an unmodified manifest; the file is tampered)")
    try:
        for entry in manifest["cases"]:
            name = entry["case"]
            for f in FILES:
                rel = os.path.join(name, f)
                path = os.path.join(gdir, rel)
                if not os.path.isfile(path):
                    raise ValueError(f"{path}: no such file (listed in the manifest; the suite "
                                     "is incomplete)")
                got = _sha256(path)
                if got != entry["sha256"][f]:
                    raise ValueError(f"{path}: sha256 {got[:16]}... does not match the manifest's "
                                     f"{entry['sha256'][f][:16]}... (expected an unmodified "
                                     "file; it is tampered or corrupted)")
    except (KeyError, TypeError):
        raise ValueError(f"{mpath}: missing or malformed key in 'cases' (expected the manifest "
                         "written by `golden --out`)") from None
    return manifest


@dataclasses.dataclass
class GoldenCheckReport:
    """Per case and tensor: relative error of the recomputation against the stored file."""
    errors: dict
    tolerance: float
    unlisted: list = dataclasses.field(default_factory=list)
    backend: str = "numpy"
    numpy_only: list = dataclasses.field(default_factory=list)   # cases recomputed on NumPy

    @property
    def passed(self):
        return all(e <= self.tolerance for c in self.errors.values() for e in c.values())

    def to_text(self):
        lines = []
        for case, errs in self.errors.items():
            worst = max(errs, key=errs.get)
            ok = all(e <= self.tolerance for e in errs.values())
            lines.append(f"{case:<36} {'ok' if ok else 'MISMATCH':<9} {len(errs)} tensors, "
                         f"worst {worst} rel_err {errs[worst]:.2e}")
        if self.numpy_only:
            lines.append(f"note: {len(self.numpy_only)} case(s) recomputed on numpy, not "
                         f"{self.backend} (their model runs on NumPy only): "
                         + ", ".join(self.numpy_only))
        if self.unlisted:
            shown = ", ".join(self.unlisted[:5]) + (", ..." if len(self.unlisted) > 5 else "")
            lines.append(f"note: {len(self.unlisted)} file(s) not listed in the manifest, not "
                         f"checked: {shown}")
        lines.append(("PASS" if self.passed else "FAIL") + f": {len(self.errors)} cases, "
                     f"checksums intact, recomputed within {self.tolerance:.0e}")
        return "\n".join(lines)

    def to_json(self):
        return json.dumps({"passed": self.passed, "tolerance": self.tolerance,
                           "errors": self.errors, "unlisted": self.unlisted,
                           "backend": self.backend, "numpy_only": self.numpy_only}, indent=1)


def check_golden(golden_dir, backend="numpy"):
    """Check checksums (ValueError if tampered) and recompute every case (report), on
    ``backend`` ("numpy": the autograd cores; else rssm_ref.xp.models on that module).

    >>> check_golden("/nonexistent")
    Traceback (most recent call last):
    ...
    ValueError: /nonexistent: no such directory (expected a golden suite written by `golden --out`)
    """
    manifest = read_manifest(golden_dir)
    tol = TOLERANCES["golden_recompute"]
    errors, numpy_only = {}, []
    for entry in manifest["cases"]:
        name, model = entry["case"], entry["model"]
        ppath = case_path(golden_dir, name, "params")
        ipath = case_path(golden_dir, name, "inputs")
        rpath = case_path(golden_dir, name, "reference")
        opts = entry["options"]
        params, sizes = formats.load_params(ppath, model, bool(opts.get("allow_unstable")),
                                            options=opts)
        inputs, _ = formats.load_inputs(ipath, model, sizes, params_where=ppath)
        ropts, rparams, rinputs, routs = formats.check_reference(
            formats.load_npz(rpath, "reference"), where=rpath)
        for mine, theirs, what in ((params, rparams, "params"), (inputs, rinputs, "inputs")):
            if sorted(mine) != sorted(theirs) or any(
                    not onp.array_equal(mine[k], theirs[k]) for k in mine):
                raise ValueError(f"{rpath}: embedded {what} differ from {name}/{what}.npz "
                                 "(expected the same arrays; the suite is inconsistent)")
        if {k: v for k, v in ropts.items() if k != "rssm_ref_version"} != opts:
            raise ValueError(f"{rpath}: key 'options_json' differs from the manifest's options "
                             f"for case {name} (expected the same options)")
        on = backend if model in forward.BACKEND_MODELS else "numpy"
        if on != backend:
            numpy_only.append(name)
        fresh = forward.compute_checked(model, params, inputs, opts, on)
        # every stored output is recomputed and compared; outputs a newer rssm-ref adds
        # (e.g. last_state) are not in an older suite and are simply not part of it
        gone = sorted(set(routs) - set(fresh))
        if gone:
            raise ValueError(f"{rpath}: key '{gone[0]}' is no longer computed for this case "
                             "(expected only outputs of the case; regenerate the suite)")
        if not routs:
            raise ValueError(f"{rpath}: no stored outputs (expected at least y)")
        errors[name] = {k: rel_err(routs[k], fresh[k]) for k in sorted(routs)}
    return GoldenCheckReport(errors, tol, unlisted_files(golden_dir, manifest), backend,
                             numpy_only)


@dataclasses.dataclass
class WriteSummary:
    """What ``golden --out`` wrote."""
    out: str
    manifest: dict
    passed: bool = True

    def to_text(self):
        names = [c["case"] for c in self.manifest["cases"]]
        return f"wrote {len(names)} golden cases to {self.out}: " + ", ".join(names)

    def to_json(self):
        return json.dumps({"out": self.out, "cases": [c["case"] for c in self.manifest["cases"]]},
                          indent=1)


@dataclasses.dataclass(frozen=True)
class GoldenConfig:
    """``golden``: write a suite to ``out`` or check the suite in ``check`` (exactly one)."""
    out: Optional[str] = None
    check: Optional[str] = None
    backend: Optional[str] = None   # --check only; None: $RSSM_REF_BACKEND, else numpy


def run_golden(config):
    """Dispatch a GoldenConfig: WriteSummary (--out) or GoldenCheckReport (--check)."""
    if (config.out is None) == (config.check is None):
        raise ValueError("golden: expected exactly one of --out DIR or --check DIR")
    backend = config.backend or get_backend_name()
    if config.out is not None:
        if config.backend not in (None, "numpy"):
            raise ValueError(f"backend: {config.backend!r} with --out (expected it only with "
                             "--check: a golden suite is written by the NumPy reference cores)")
        return WriteSummary(os.fspath(config.out), write_golden(config.out))
    namespace(backend)
    return check_golden(config.check, backend)
