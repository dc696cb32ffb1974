"""Speed and memory of the fast paths, each as a ratio against a baseline timed in the
same run (best of several repeats on the same inputs). Absolute times on a shared
machine are noise; side-by-side ratios are not.

Figures (``FIGURES``; sizes shrink with ``quick``):

| figure                                   | baseline                      | target   |
|------------------------------------------|-------------------------------|----------|
| lti_recurrent: tf_filter, SISO order 4   | scipy.signal.lfilter          | <= 1.3x  |
| fft_exact: tf_fft_filter MIMO 16x16      | tf_filter (recurrent path)    | <= 0.3x  |
| gate_forward: gate (1000, 1024)          | first-order lfilter           | <= 2x    |
| residual_grad: loss gradient, L 16 b 256 | its own forward               | <= 3x    |
| selective_fast_vs_ref                    | selective_ssm_ref loop        | report   |
| residual_eval_L1024: time, peak memory   | —                             | report   |
| residual_train_step                      | —                             | report   |
| scaling: log-log slope of forward time   | —                             | report   |
| backend_forward: Residual SSM forward,   | the NumPy reference cores     | report   |
|   fft path, on ``--backend``             |   (residual_ssm_tf), same u   |          |

Glossary
--------
run_bench(quick=False, progress=None, only=None, backend="numpy", backend_size=None)
  -> list of dict(figure, value, unit, baseline, target, pass, detail)
format_bench(rows, quick=False) -> str;  bench_document(rows, quick=False) -> dict;
write_json(rows, path, quick=False);  parse_size("1000x65536") -> (1000, 65536)
A ``quick`` run is a smoke run (small sizes, 2 repeats): the table's first line, its
verdicts ("MISS (smoke)") and the JSON's ``quick`` and ``note`` say so.

>>> rows = run_bench(quick=True, only=("lti_recurrent",))
>>> rows[0]["figure"], rows[0]["unit"]
('lti_recurrent', 'ratio')
"""
import json
import os
import platform
import tempfile
import time
import tracemalloc

import numpy as onp
import scipy.signal as ssig
from autograd import value_and_grad

__all__ = ["run_bench", "format_bench", "bench_document", "write_json", "FIGURES"]

SMOKE_NOTE = ("SMOKE RUN (--quick): small sizes and 2 repeats check that every figure runs; "
              "the ratios are noisy and the verdicts are not the benchmark's")

FIGURES = ("lti_recurrent", "fft_exact", "gate_forward", "residual_grad", "selective_fast_vs_ref",
           "residual_eval_L1024", "residual_train_step", "scaling", "backend_forward")


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _stable_den(rng, rows, order, radius=0.95):
    from rssm_ref.lti import den_from_reflection
    return den_from_reflection(radius * onp.tanh(rng.normal(0, 1, size=(rows, order))))


def _ratio_row(figure, fast, base, target, baseline, detail):
    ratio = fast / base
    return {"figure": figure, "value": ratio, "unit": "ratio", "baseline": baseline,
            "target": f"<= {target}x" if target else "report",
            "pass": (ratio <= target) if target else None,
            "detail": dict(detail, fast_s=fast, baseline_s=base)}


def _lti_recurrent(q, R):
    from rssm_ref.recurrence import tf_filter
    rng = onp.random.default_rng(0)
    batch, L = (100, 256) if q else (1000, 1024)
    num = rng.normal(size=(1, 1, 5))
    den = _stable_den(rng, 1, 4)
    u = rng.normal(size=(batch, L, 1))
    x = onp.ascontiguousarray(u[:, :, 0])
    fast = _best(lambda: tf_filter(num, den, u), R)
    base = _best(lambda: ssig.lfilter(num[0, 0], den[0], x, axis=-1), R)
    return _ratio_row("lti_recurrent", fast, base, 1.3, "scipy.signal.lfilter",
                      {"batch": batch, "L": L, "order": 4})


def _fft_exact(q, R):
    from rssm_ref.convolution import tf_fft_filter
    from rssm_ref.recurrence import tf_filter
    rng = onp.random.default_rng(1)
    p = m = 4 if q else 16
    L, batch = (512, 2) if q else (4096, 4)
    num = rng.normal(size=(p, m, 5))
    den = _stable_den(rng, p, 4)
    u = rng.normal(size=(batch, L, m))
    fast = _best(lambda: tf_fft_filter(num, den, u), R)
    base = _best(lambda: tf_filter(num, den, u), R)
    return _ratio_row("fft_exact", fast, base, 0.3, "tf_filter (recurrent path)",
                      {"p": p, "m": m, "order": 4, "L": L, "batch": batch})


def _gate_forward(q, R):
    from rssm_ref.gate import gate
    rng = onp.random.default_rng(2)
    batch, L = (100, 256) if q else (1000, 1024)
    y_s = rng.normal(size=(batch, L, 1))
    s = rng.uniform(0, 1, size=(batch, L))
    x = onp.ascontiguousarray(y_s[:, :, 0])
    fast = _best(lambda: gate(y_s, s), R)
    base = _best(lambda: ssig.lfilter([0.5], [1.0, -0.5], x, axis=-1), R)
    return _ratio_row("gate_forward", fast, base, 2.0, "first-order lfilter",
                      {"batch": batch, "L": L, "m": 1})


def _residual_setup(batch, L, seed=0):
    from rssm_ref.models import ModelConfig, init_params
    from rssm_ref.tasks import make_batch
    cfg = ModelConfig("residual", "induction")
    params = init_params(cfg, seed=seed)
    tok, tgt = make_batch("induction", onp.random.default_rng(seed), batch, L)
    return cfg, params, tok, tgt


def _residual_grad(q, R):
    from rssm_ref.models import loss
    cfg, params, tok, tgt = _residual_setup(64 if q else 256, 16)
    vg = value_and_grad(lambda p: loss(cfg, p, tok, tgt))
    fast = _best(lambda: vg(params), R)
    base = _best(lambda: loss(cfg, params, tok, tgt), R)
    return _ratio_row("residual_grad", fast, base, 3.0, "its own forward (loss)",
                      {"batch": len(tok), "L": 16, "path": cfg.path})


def _selective(q, R):
    from rssm_ref.selective_ssm import random_params, selective_ssm, selective_ssm_ref
    P = random_params(m=16, n=8, seed=0)
    batch, L = (2, 16) if q else (8, 64)
    u = onp.random.default_rng(3).normal(size=(batch, L, 16))
    fast = _best(lambda: selective_ssm(u, **P), R)
    base = _best(lambda: selective_ssm_ref(u, **P), 1)
    return _ratio_row("selective_fast_vs_ref", fast, base, None, "selective_ssm_ref loop",
                      {"batch": batch, "L": L, "m": 16, "n": 8})


def _residual_eval(q, R):
    from rssm_ref.models import accuracy
    cfg, params, tok, tgt = _residual_setup(100 if q else 1000, 1024)
    tracemalloc.start()
    t = time.perf_counter()
    accuracy(cfg, params, tok, tgt, chunk=len(tok))
    elapsed = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"figure": "residual_eval_L1024", "value": elapsed, "unit": "s", "baseline": None,
            "target": "report", "pass": None,
            "detail": {"batch": len(tok), "L": 1024, "peak_MiB": peak / 2 ** 20}}


def _residual_train_step(q, R):
    from rssm_ref.models import ModelConfig
    from rssm_ref.train import TrainConfig, train
    cfg = ModelConfig("residual", "induction")
    steps = 5 if q else 50
    t = time.perf_counter()
    train(cfg, TrainConfig(steps=steps, batch=256, warmup=1, seed=0))
    per = (time.perf_counter() - t) / steps
    return {"figure": "residual_train_step", "value": per, "unit": "s", "baseline": None,
            "target": "report", "pass": None,
            "detail": {"batch": 256, "L": 16, "steps_timed": steps,
                       "reproduce_24k_steps_estimate_s": 27000 * per}}


def _scaling(q, R):
    from rssm_ref.residual_ssm import ResidualSSM
    model = ResidualSSM.random(seed=0)
    lengths = [2 ** k for k in (range(8, 12) if q else range(10, 17))]
    times = []
    for L in lengths:
        u = onp.random.default_rng(L).normal(size=(4, L, 2))
        times.append(_best(lambda: model.forward(u, path="fft"), R))
    slope = float(onp.polyfit(onp.log(lengths), onp.log(times), 1)[0])
    return {"figure": "scaling", "value": slope, "unit": "log-log slope", "baseline": None,
            "target": "report (1 = O(L))", "pass": None,
            "detail": {"lengths": lengths, "seconds": times, "model": "residual fft path, batch 4"}}


def parse_size(text):
    """"BATCHxL" -> (batch, L), both >= 1.

    >>> parse_size("1000x65536")
    (1000, 65536)
    """
    try:
        batch, L = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"backend size: {text!r} (expected BATCHxL, e.g. 1000x65536)") from None
    if batch < 1 or L < 1:
        raise ValueError(f"backend size: {text!r} (expected positive BATCH and L)")
    return batch, L


def _backend_forward(q, R, backend="numpy", size=None):
    from rssm_ref.backend import namespace, synchronize, to_backend, to_host
    from rssm_ref.residual_ssm import ResidualSSM, residual_ssm_tf
    from rssm_ref.tolerances import rel_err
    from rssm_ref.xp_models import residual_ssm_xp
    xp = namespace(backend)
    batch, L = size or ((8, 4096) if q else (100, 65536))
    model = ResidualSSM.random(seed=0)
    P = dict(zip(("sigma_num", "sigma_den", "r_num", "r_den", "gate_bias"), model.tf_arrays()))
    u = onp.random.default_rng(0).normal(size=(batch, L, 2))
    u_dev = to_backend(u, xp)
    holder = {}

    def fast():
        holder["y"] = residual_ssm_xp(P, u_dev, path="fft")["y"]
        synchronize(holder["y"])

    fast()   # warm-up: FFT plans, GPU kernels compiled on first use
    t_fast = _best(fast, max(1, R // 2))
    y_ref = residual_ssm_tf(*model.tf_arrays(), u, path="fft")
    t_ref = _best(lambda: residual_ssm_tf(*model.tf_arrays(), u, path="fft"), max(1, R // 2))
    row = _ratio_row("backend_forward", t_fast, t_ref, None, "NumPy reference cores (residual_ssm_tf)",
                     {"backend": backend, "batch": batch, "L": L, "m": 2, "path": "fft",
                      "rel_err_vs_reference": rel_err(to_host(holder["y"]), y_ref)})
    return row


_RUNNERS = {"lti_recurrent": _lti_recurrent, "fft_exact": _fft_exact, "gate_forward": _gate_forward,
            "residual_grad": _residual_grad, "selective_fast_vs_ref": _selective,
            "residual_eval_L1024": _residual_eval, "residual_train_step": _residual_train_step,
            "scaling": _scaling, "backend_forward": _backend_forward}


def check_figures(only):
    """The figures to run: ``only`` (checked against FIGURES) or all of them.

    >>> check_figures(("scaling",))
    ('scaling',)
    """
    names = tuple(only or FIGURES)
    for name in names:
        if name not in _RUNNERS:
            raise ValueError(f"figure: {name!r} (expected one of {', '.join(FIGURES)})")
    return names


def run_bench(quick=False, progress=None, only=None, backend="numpy", backend_size=None):
    """Run every figure (or those in ``only``); returns a list of result rows.
    ``backend`` and ``backend_size`` (batch, L) apply to the backend_forward figure."""
    from rssm_ref.backend import namespace
    namespace(backend)
    names = check_figures(only)
    R = 2 if quick else 7
    rows = []
    for name in names:
        if name == "backend_forward":
            rows.append(_backend_forward(quick, R, backend, backend_size))
        else:
            rows.append(_RUNNERS[name](quick, R))
        if progress:
            progress(name, rows[-1])
    return rows


def format_bench(rows, quick=False):
    """A table: figure, value, target, verdict (a smoke run says so)."""
    lines = [SMOKE_NOTE] if quick else []
    lines.append(f"{'figure':<24}{'value':>14}  {'target':<20}{'verdict':<8} baseline")
    for r in rows:
        v = r["value"]
        val = f"{v:.3f}x" if r["unit"] == "ratio" else (f"{v * 1e3:.1f} ms" if r["unit"] == "s" else f"{v:.2f}")
        verdict = "PASS" if r["pass"] else ("MISS" if r["pass"] is False else "-")
        if quick and r["pass"] is not None:
            verdict += " (smoke)"
        lines.append(f"{r['figure']:<24}{val:>14}  {r['target']:<20}{verdict:<8} {r['baseline'] or ''}")
        if r["figure"] == "residual_eval_L1024":
            lines[-1] += f" (peak {r['detail']['peak_MiB']:.0f} MiB)"
        if r["figure"] == "backend_forward":
            d = r["detail"]
            lines[-1] += (f" ({d['backend']}, batch {d['batch']}, L {d['L']}: "
                          f"{d['fast_s'] * 1e3:.0f} ms vs {d['baseline_s'] * 1e3:.0f} ms, "
                          f"rel err {d['rel_err_vs_reference']:.1e})")
    return "\n".join(lines)


def bench_document(rows, quick=False):
    """{"quick", "note", "machine", "rows"}: what --json prints and --json-out writes."""
    return {"quick": bool(quick), "note": SMOKE_NOTE if quick else "full sizes, 7 repeats",
            "machine": {"python": platform.python_version(), "numpy": onp.__version__,
                        "cpus": os.cpu_count(), "load_avg": list(os.getloadavg())},
            "rows": rows}


def write_json(rows, path, quick=False):
    """Write ``bench_document`` atomically (temporary name, then rename); the folder
    must exist."""
    doc = bench_document(rows, quick)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise ValueError(f"--json-out: {path}: folder {d} does not exist (expected an existing "
                         "folder)")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2, default=float)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
