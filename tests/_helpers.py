"""Helpers shared by the test modules: the LTI ones, and the CLI-driving oracle tests."""
import numpy as onp
import scipy.signal as ssig
from autograd.test_util import check_grads


def rng(seed=0):
    return onp.random.default_rng(seed)


def check_all_grads(f, *args):
    """check_grads in reverse mode w.r.t. every positional argument (seeded directions)."""
    onp.random.seed(0)
    check_grads(f, argnum=tuple(range(len(args))), modes=["rev"], order=1)(*args)


def kappa(den, L):
    """Condition number of a denominator's coefficients over L steps (worst row):
    ||1/a||_1 (the all-pole impulse response summed to L) times ||a||_1 / |a_0|."""
    delta = onp.zeros(L)
    delta[0] = 1.0
    return max(onp.abs(ssig.lfilter([1.0], row, delta)).sum() * onp.abs(row).sum() / abs(row[0])
               for row in onp.atleast_2d(den))


def run_cli(*args):
    """The CLI on ``args`` (any objects, passed as strings) through click's CliRunner."""
    from click.testing import CliRunner
    from rssm_ref.app.cli import main
    return CliRunner().invoke(main, [str(a) for a in args])


def candidate_file(ref_path, path, change=None, dtype=None):
    """A candidate file from a forward output: its outputs only (no param__/input__/
    options_json), edited in place by ``change`` and cast to ``dtype`` when given."""
    z = dict(onp.load(ref_path))
    out = {k: v for k, v in z.items() if not k.startswith(("param__", "input__", "options"))}
    if change:
        change(out)
    if dtype:
        out = {k: v.astype(dtype) for k, v in out.items()}
    onp.savez(path, **out)
