"""``python -m rssm_ref <command> ...``: the same commands as ``rssm-ref`` (rssm_ref/app/cli.py)."""
import sys

from rssm_ref.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
