"""The one place that chooses the array module.

NumPy is the default and the reference. CuPy is optional (``pip install .[gpu]``) and is
imported only here, lazily, so that importing rssm_ref never needs it.

Glossary
--------
available_backends() -> list[str]
get_backend_name() -> "numpy" | "cupy"   (env RSSM_REF_BACKEND, default "numpy")

>>> "numpy" in available_backends()
True
"""
import importlib
import os


def available_backends():
    """Names of the array modules that import here (NumPy always).

    >>> available_backends()[0]
    'numpy'
    """
    names = ["numpy"]
    try:
        cp = importlib.import_module("cupy")
        if cp.cuda.runtime.getDeviceCount() > 0:
            names.append("cupy")
    except Exception:  # no CuPy, or no device: NumPy only, by design
        pass
    return names


def get_backend_name():
    """The backend asked for by ``RSSM_REF_BACKEND`` (default ``numpy``).

    >>> get_backend_name() in ("numpy", "cupy")
    True
    """
    name = os.environ.get("RSSM_REF_BACKEND", "numpy").lower()
    if name not in ("numpy", "cupy"):
        raise ValueError(f"RSSM_REF_BACKEND={name!r} (expected 'numpy' or 'cupy')")
    return name
