"""Helpers shared by the LTI test modules."""
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
