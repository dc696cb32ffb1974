"""rssm-ref: float64 reference oracle for the Residual SSM (Casti, Zampieri, Pasqualetti,
arXiv 2505.17932) and the Mamba selective-SSM core it is compared against.

Layout follows the paper's Fig. 3 from the bottom up (docs/architecture.md):
``realization`` (Markov parameters, ss <-> tf), ``recurrence`` and ``convolution`` (the
two computation paths of eq. (1)), ``discretize`` (eq. (3) and classic methods), ``gate``
(eq. (5) and Remark 3.1), ``lti`` (the StateSpace and TransferFunction objects),
``residual_ssm`` (Section 3.2.2), ``selective_ssm`` (Section 3.2.1); below them
``kernels`` (the training path's primitives), ``validation``, ``util``, ``xp``; above them
``training``, ``oracle``, ``experiments``, ``testing``, ``app``.

The main types and functions are importable from the top level (loaded on first use,
so ``import rssm_ref`` stays light):

>>> from rssm_ref import StateSpace, TransferFunction
>>> TransferFunction([1.0, 0.0], [1.0, -0.5]).filter([1.0, 1.0, 1.0]).tolist()
[1.0, 1.5, 1.75]
>>> "StateSpace" in __all__ and "compute" in __all__
True
"""
from rssm_ref.util.version import VERSION as __version__  # noqa: F401

# public name -> module that defines it (PEP 562 lazy attributes). Functions named like
# their module (rssm_ref.gate.gate, rssm_ref.training.train.train, rssm_ref.experiments.explain.explain,
# rssm_ref.selective_ssm.selective_ssm) stay
# in their module: a package attribute would shadow the submodule.
_EXPORTS = {
    "rssm_ref.lti": ("StateSpace", "TransferFunction", "from_scipy", "from_control"),
    "rssm_ref.realization": ("ss2tf", "tf2ss", "markov_parameters", "den_from_reflection"),
    "rssm_ref.recurrence": ("tf_filter", "ss_filter"),
    "rssm_ref.convolution": ("fft_conv", "tf_kernel", "tf_fft_filter", "ss_fft_filter"),
    "rssm_ref.discretize": ("cont2discrete", "mamba_discretize"),
    "rssm_ref.residual_ssm": ("residual_ssm_tf", "residual_ssm_ss", "ResidualSSM"),
    "rssm_ref.training.tasks": ("induction_head", "extended_induction_head"),
    "rssm_ref.training.head": ("ModelConfig",),
    "rssm_ref.training.train": ("TrainConfig",),
    "rssm_ref.experiments.reproduce": ("ReproduceConfig", "reproduce"),
    "rssm_ref.experiments.explain": ("ExplainConfig",),
    "rssm_ref.oracle.forward": ("compute",),
    "rssm_ref.oracle.verify": ("verify",),
    "rssm_ref.util.progress": ("Progress",),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        import importlib
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rssm_ref' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
