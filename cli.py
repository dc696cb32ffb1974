#!/usr/bin/env python
"""Run rssm-ref from a clone without installing it: ``python cli.py <command> ...``.

The commands live in ``rssm_ref/app/cli.py`` (edit them there). Installed, the same
commands are ``rssm-ref <command> ...`` and ``python -m rssm_ref <command> ...``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rssm_ref.app.cli import UserError, main, run_guarded  # noqa: E402,F401  (re-exported for tests)

if __name__ == "__main__":
    sys.exit(main())
