"""Install rssm-ref: the float64 reference oracle for the Residual SSM (arXiv 2505.17932)."""
from setuptools import find_packages, setup

setup(
    name="rssm-ref",
    version="0.1.0",
    description=(
        "float64 ground-truth oracle for the Residual SSM of Casti, Zampieri and "
        "Pasqualetti (arXiv 2505.17932) and the Mamba selective-SSM core"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rssm_ref", "rssm_ref.*"]),
    python_requires=">=3.9",
    install_requires=["numpy>=1.22", "scipy>=1.8", "autograd>=1.6", "click>=8.0"],
    extras_require={
        # array-api-strict: the CPU stand-in that keeps NumPy-only calls out of the
        # backend-neutral kernels (rssm_ref.xp.core, rssm_ref.xp.models)
        # control: python-control, for rssm_ref.lti.from_control / .to_control (optional)
        "test": ["pytest>=7", "hypothesis>=6.50", "matplotlib>=3.5", "array-api-strict>=2.0",
                 "control>=0.10"],
        "control": ["control>=0.10"],
        "plot": ["matplotlib>=3.5"],
        # CuPy for CUDA 12 and the array-API wrapper the neutral kernels use on it
        "gpu": ["cupy-cuda12x>=13", "array-api-compat>=1.4"],
        # optional: real third-party Mamba code against the oracle
        # (tests/test_mamba_third_party.py, docs/12-verify-mamba.md); CPU torch suffices
        "thirdparty": ["torch>=2.0", "mambapy>=1.2", "einops>=0.7"],
        # optional comparison peers for `bench --peers` (benchmarks/peers.py); CPU builds
        "peers": ["jax", "torch"],
    },
    entry_points={"console_scripts": ["rssm-ref=rssm_ref.app.cli:main"]},
)
