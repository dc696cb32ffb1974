"""``python -m rssm_ref <command> ...``: the same commands as ``rssm-ref`` (rssm_ref/cli.py)."""
import sys

from rssm_ref.cli import main

if __name__ == "__main__":
    sys.exit(main())
