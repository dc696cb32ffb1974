"""The one place that chooses the array module.

NumPy is the default and the reference: the autograd-differentiated cores (``lti``,
``recurrence``, ``convolution``, ``gate``, ``residual_ssm``, ``selective_ssm``) hold
NumPy arrays. The backend-neutral kernels (``rssm_ref.xp.core``, ``rssm_ref.xp.models``)
are written against the Python array API standard and take their module from here:

=================  ================================================  =====================
name               module used by the neutral kernels                 installed by
=================  ================================================  =====================
numpy              ``numpy`` (NumPy >= 2 is an array-API namespace)   always
cupy               ``array_api_compat.cupy`` (CuPy on a CUDA GPU)     ``pip install .[gpu]``
array_api_strict   ``array_api_strict``: a CPU module holding only    ``pip install .[test]``
                   what the standard allows, so a NumPy-only call
                   in the neutral code fails loudly in the tests
=================  ================================================  =====================

CuPy and array_api_strict are imported only here, lazily, so importing rssm_ref never
needs them. The backend is chosen by ``--backend`` on the CLI, by the environment
variable ``RSSM_REF_BACKEND``, or by the arrays passed in (``namespace_of``).

Glossary
--------
BACKENDS                                   the names above
available_backends() -> list[str]          the ones that import (and, for CuPy, see a GPU)
get_backend_name() -> str                  env RSSM_REF_BACKEND, default "numpy"
namespace(name) -> module                  the array module for a name (clear error if absent)
namespace_of(*arrays) -> module            the array module the arrays belong to
to_backend(a, xp) -> xp array (float64)    host NumPy -> the backend (a copy on the GPU)
to_host(x) -> numpy.ndarray (float64)      any backend's array -> host NumPy

>>> "numpy" in available_backends()
True
>>> import numpy
>>> xp = namespace("numpy")
>>> to_host(to_backend([1.0, 2.0], xp)).tolist()
[1.0, 2.0]
"""
import importlib
import os

import numpy as onp

__all__ = ["BACKENDS", "BackendUnavailable", "available_backends", "get_backend_name",
           "namespace", "namespace_of", "to_backend", "to_host", "backend_name_of", "synchronize"]

BACKENDS = ("numpy", "cupy", "array_api_strict")
ENV_VAR = "RSSM_REF_BACKEND"


class BackendUnavailable(ValueError):
    """The asked-for backend cannot run here; the message says why and what to install."""


def _import(modname):
    return importlib.import_module(modname)


def _cupy_namespace():
    try:
        cp = _import("cupy")
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        raise BackendUnavailable(
            f"backend 'cupy': CuPy does not import here ({type(exc).__name__}: {exc}); "
            "install it with pip install '.[gpu]' on a machine with a CUDA GPU") from None
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendUnavailable(f"backend 'cupy': CuPy imports but finds no CUDA device "
                                 f"({type(exc).__name__}: {exc})") from None
    if count < 1:
        raise BackendUnavailable("backend 'cupy': CuPy imports but finds no CUDA device")
    try:
        return _import("array_api_compat.cupy")
    except ImportError:
        raise BackendUnavailable("backend 'cupy': needs array-api-compat (pip install "
                                 "'.[gpu]' installs it with CuPy)") from None


def _strict_namespace():
    try:
        return _import("array_api_strict")
    except ImportError:
        raise BackendUnavailable("backend 'array_api_strict': not installed (pip install "
                                 "'.[test]' or pip install array-api-strict)") from None


def _numpy_namespace():
    if int(onp.__version__.split(".")[0]) < 2:
        # NumPy 1.x's main namespace lacks the standard's names (concat, permute_dims, ...)
        try:
            return _import("array_api_compat.numpy")
        except ImportError:
            raise BackendUnavailable("backend 'numpy' for the neutral kernels: NumPy "
                                     f"{onp.__version__} needs array-api-compat (or NumPy >= 2)") from None
    return onp


def namespace(name=None):
    """The array module for a backend name (default: ``get_backend_name()``).

    Raises ``BackendUnavailable`` (a ValueError) naming what is missing.

    >>> namespace("numpy").__name__
    'numpy'
    >>> namespace("tpu")
    Traceback (most recent call last):
    ...
    rssm_ref.xp.backend.BackendUnavailable: backend 'tpu': unknown (expected one of numpy, cupy, array_api_strict)
    """
    name = get_backend_name() if name is None else str(name).lower()
    if name == "numpy":
        return _numpy_namespace()
    if name == "cupy":
        return _cupy_namespace()
    if name == "array_api_strict":
        return _strict_namespace()
    raise BackendUnavailable(f"backend {name!r}: unknown (expected one of {', '.join(BACKENDS)})")


def available_backends():
    """Names of the backends that run here (NumPy always; CuPy only with a GPU).

    >>> available_backends()[0]
    'numpy'
    """
    names = []
    for name in BACKENDS:
        try:
            namespace(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


def get_backend_name():
    """The backend asked for by ``RSSM_REF_BACKEND`` (default ``numpy``).

    >>> get_backend_name() in BACKENDS
    True
    """
    name = os.environ.get(ENV_VAR, "numpy").lower()
    if name not in BACKENDS:
        raise BackendUnavailable(f"{ENV_VAR}={name!r} (expected one of {', '.join(BACKENDS)})")
    return name


def backend_name_of(x):
    """'cupy', 'array_api_strict' or 'numpy' (anything else array-like is host data).

    >>> backend_name_of(onp.ones(2))
    'numpy'
    """
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        return "cupy"
    if mod == "array_api_strict":
        return "array_api_strict"
    return "numpy"


def namespace_of(*arrays):
    """The array module that all of ``arrays`` belong to (None entries are skipped).

    Mixing backends (a CuPy array with a host array) is refused: a silent host copy in
    the middle of a kernel is exactly what the neutral code must not do.

    >>> namespace_of(onp.ones(2), None, 1.0).__name__
    'numpy'
    """
    names = {backend_name_of(a) for a in arrays
             if a is not None and not isinstance(a, (int, float))}
    if len(names) > 1:
        raise TypeError(f"arrays from different backends mixed: {sorted(names)} (move them "
                        "to one backend with rssm_ref.xp.backend.to_backend first)")
    return namespace(names.pop() if names else "numpy")


def to_backend(a, xp):
    """Host data -> a float64 array of module ``xp`` (a host-to-device copy for CuPy).

    >>> to_backend([[1, 2]], namespace("numpy")).dtype.name
    'float64'
    """
    if a is None:
        return None
    if backend_name_of(a) != "numpy":
        a = to_host(a)
    return xp.asarray(onp.asarray(a, dtype=onp.float64))


def to_host(x):
    """Any backend's array -> a float64 NumPy array on the host (a copy from the GPU).

    >>> to_host(namespace("numpy").ones(2)).tolist()
    [1.0, 1.0]
    """
    if x is None:
        return None
    name = backend_name_of(x)
    if name == "cupy":
        return onp.asarray(x.get(), dtype=onp.float64)
    if name == "array_api_strict":
        return onp.asarray(onp.from_dlpack(x), dtype=onp.float64)
    return onp.asarray(x, dtype=onp.float64)


def synchronize(x):
    """Wait until the work that produced ``x`` has finished (GPU kernels run
    asynchronously; a timing without this measures only the launch). No-op off the GPU.

    >>> synchronize(onp.ones(2)) is None
    True
    """
    if backend_name_of(x) == "cupy":
        _import("cupy").cuda.get_current_stream().synchronize()
    return None
