"""Output paths that never destroy an input, and files written whole, with the usual mode.

Every command that writes calls ``check_outputs`` before it computes anything: each path
is resolved with ``os.path.realpath`` (symlinks, ``..`` and relative paths included), and
a write is refused (ValueError naming both flags; the CLI's exit 2) when

- an output file resolves to an input file (or is a hard link to it),
- two outputs of one command resolve to one path,
- an output file is an existing directory, or an output folder an existing file.

Every file is written by ``atomic_write``: a temporary name in the target folder, then
``os.replace``, so a reader never sees half a file and a failure leaves none; its mode
is what a plain ``open()`` would give (0666 minus the umask, usually 0644), not
mkstemp's 0600.

Glossary
--------
outputs, inputs, folders    sequences of (flag, path): the flag as the user typed it
check_outputs(outputs, inputs=(), folders=()) -> None   (raises ValueError)
atomic_write(path, write, mode="wb", suffix="")           write(fileobj) fills the file
finish_tmp(tmp)              give a temporary file the usual mode before its rename

>>> import os, tempfile
>>> d = tempfile.mkdtemp(); u = os.path.join(d, "U.npz"); open(u, "wb").close()
>>> check_outputs([("--out", os.path.join(d, "sub", "..", "U.npz"))], [("--inputs", u)])
Traceback (most recent call last):
...
ValueError: --out: ... is the same file as --inputs ... (expected a new path: writing it would destroy the input)
"""
import os
import tempfile

import numpy

__all__ = ["check_outputs", "atomic_write", "finish_tmp", "umask"]


def _real(path):
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _same(a, b):
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)          # hard links
    except OSError:
        return False


def check_outputs(outputs, inputs=(), folders=()):
    """Refuse outputs that would overwrite an input or each other (see the module doc).

    ``outputs``: (flag, path) of every file the command writes (``None`` paths are
    skipped); ``inputs``: (flag, path) of every file it reads; ``folders``: (flag, path)
    of output folders (created or reused: they must not be files). An input that is a
    folder's output file is caught through ``outputs`` (list the files written there).

    >>> check_outputs([("--out", "/tmp/a.npz"), ("--inputs-out", "/tmp/./a.npz")])
    Traceback (most recent call last):
    ...
    ValueError: --inputs-out: /tmp/./a.npz is the same file as --out /tmp/a.npz (expected two different paths: one would overwrite the other)
    """
    outs = [(flag, os.fspath(p)) for flag, p in outputs if p is not None and os.fspath(p) != ""]
    ins = [(flag, os.fspath(p)) for flag, p in inputs if p is not None and os.fspath(p) != ""]
    for flag, p in folders:
        if p is not None and os.path.exists(os.fspath(p)) and not os.path.isdir(os.fspath(p)):
            raise ValueError(f"{flag}: {os.fspath(p)} is an existing file (expected a folder "
                             "to write into)")
    for i, (flag, p) in enumerate(outs):
        if os.path.isdir(p):
            example = os.path.join(p, "out.json" if "json" in flag else "out.npz")
            raise ValueError(f"{flag}: {p} is a directory (expected a file name to write, "
                             f"e.g. {example})")
        for iflag, ip in ins:
            if _same(p, ip):
                raise ValueError(f"{flag}: {p} is the same file as {iflag} {ip} (expected a "
                                 "new path: writing it would destroy the input)")
        for oflag, op in outs[:i]:
            if _same(p, op):
                raise ValueError(f"{flag}: {p} is the same file as {oflag} {op} (expected two "
                                 "different paths: one would overwrite the other)")


def umask():
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def finish_tmp(tmp):
    """Give a temporary file the mode a plain open() would (mkstemp makes 0600)."""
    os.chmod(tmp, 0o666 & ~umask())


def atomic_write(path, write, mode="wb", suffix=""):
    """Write ``path`` whole: ``write(fileobj)`` fills a temporary file in the same folder,
    which gets the usual mode and is renamed over ``path``; on any error it is removed.

    >>> import os, stat, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.txt")
    >>> atomic_write(p, lambda fh: fh.write("hi"), mode="w")
    >>> open(p).read(), oct(stat.S_IMODE(os.stat(p).st_mode)) == oct(0o666 & ~umask())
    ('hi', True)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            write(fh)
        finish_tmp(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    """:func:`atomic_write` of a text (utf-8).

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.txt"); atomic_write_text(p, "ok"); open(p).read()
    'ok'
    """
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def atomic_savez(path, arrays):
    """:func:`atomic_write` of ``numpy.savez(**arrays)``.

    >>> import os, tempfile, numpy
    >>> d = tempfile.mkdtemp(); atomic_savez(os.path.join(d, "x.npz"), {"a": numpy.ones(2)})
    >>> sorted(os.listdir(d))
    ['x.npz']
    """
    atomic_write(path, lambda fh: numpy.savez(fh, **arrays), suffix=".npz")


def atomic_savefig(fig, path, **savefig_kw):
    """:func:`atomic_write` of a matplotlib figure as PNG."""
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", **savefig_kw), suffix=".png")
