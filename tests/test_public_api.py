"""rssm_ref's public surface is a promise: ``rssm_ref.__all__`` is the snapshot below (the
names the first releases exported), every name resolves, and each resolves to the
object its defining module holds, whatever module moves happen underneath.
"""
import importlib

import rssm_ref

SNAPSHOT = [
    "ExplainConfig", "ModelConfig", "Progress", "ReproduceConfig", "ResidualSSM", "StateSpace",
    "TrainConfig", "TransferFunction", "compute", "cont2discrete", "den_from_reflection",
    "extended_induction_head", "fft_conv", "from_control", "from_scipy", "induction_head",
    "mamba_discretize", "markov_parameters", "reproduce", "residual_ssm_ss", "residual_ssm_tf",
    "ss2tf", "ss_fft_filter", "ss_filter", "tf2ss", "tf_fft_filter", "tf_filter", "tf_kernel",
    "verify",
]


def test_all_is_the_snapshot():
    assert rssm_ref.__all__ == SNAPSHOT


def test_every_name_resolves_to_its_defining_module():
    for name in SNAPSHOT:
        obj = getattr(rssm_ref, name)
        home = importlib.import_module(rssm_ref._WHERE[name])
        assert getattr(home, name) is obj, name
        # the object's own module is the one named in the export table (no stale copy)
        assert getattr(obj, "__module__", home.__name__) == home.__name__, (name, obj.__module__)


def test_version_is_the_one_of_util_version():
    from rssm_ref.util.version import VERSION
    assert rssm_ref.__version__ == VERSION
