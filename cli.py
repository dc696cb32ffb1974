#!/usr/bin/env python
"""rssm-ref command line: a thin door that maps click options to config objects and
calls the package. Bad input exits with code 2 and one line on stderr."""
import sys

import click


class UserError(click.ClickException):
    """One clear line on stderr and exit code 2; never a traceback."""
    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def run_guarded(fn, *args, **kwargs):
    """Call into the package; turn the library's ValueError/TypeError/OSError into exit 2."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        raise UserError(str(exc).strip("'\"")) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """rssm-ref: the float64 reference oracle for the Residual SSM and Mamba's selective core."""


# --- commands are registered below this line ---------------------------------------


if __name__ == "__main__":
    sys.exit(main())
