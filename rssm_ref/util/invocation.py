"""How the tool was started, so that a hint prints a command the user can paste as is.

``rssm-ref`` (the console script), ``python -m rssm_ref`` and ``python cli.py`` (from a
clone) run the same commands; a hint that says ``rssm-ref diagnose`` to someone who typed
``python cli.py verify`` sends them looking for a program they never installed.

>>> prog(["cli.py", "verify"])
'python cli.py'
>>> prog(["/usr/lib/python3/site-packages/rssm_ref/__main__.py"])
'python -m rssm_ref'
>>> prog(["/usr/local/bin/rssm-ref"])
'rssm-ref'
"""
import os
import sys


def prog(argv=None):
    """The command prefix matching ``argv`` (default ``sys.argv``): read at call time,
    so a library caller (or a test runner) gets the installed name ``rssm-ref``."""
    argv = sys.argv if argv is None else argv
    first = argv[0] if argv else ""
    base = os.path.basename(first)
    if base == "cli.py":
        return f"python {first}"
    if base == "__main__.py" and os.path.basename(os.path.dirname(first)) == "rssm_ref":
        return "python -m rssm_ref"
    return "rssm-ref"
