"""The package's version, and the versions a result was computed with (written into
every results.json, golden manifest and forward output).

>>> sorted(versions())
['autograd', 'numpy', 'python', 'rssm_ref', 'scipy']
"""
import platform
from importlib import metadata

VERSION = "0.1.0"


def versions():
    """{"rssm_ref", "numpy", "scipy", "autograd", "python"} -> version strings."""
    out = {"rssm_ref": VERSION}
    for pkg in ("numpy", "scipy", "autograd"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    out["python"] = platform.python_version()
    return out
