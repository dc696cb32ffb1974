"""rssm-ref: float64 reference oracle for the Residual SSM (Casti, Zampieri, Pasqualetti,
arXiv 2505.17932) and the Mamba selective-SSM core it is compared against.

Layout follows the paper's Fig. 3 from the bottom up: ``lti`` (discrete LTI systems,
state space and transfer function), ``recurrence`` and ``convolution`` (the two
computation paths), ``discretize`` (eq. 3 and classic methods), ``gate`` (eq. 5 and
Remark 3.1), ``residual_ssm`` (Section 3.2.2), ``selective_ssm`` (Section 3.2.1),
``tasks``, ``train``, ``experiments``, ``oracle``, ``testing``, ``backend``.
"""
__version__ = "0.1.0"
