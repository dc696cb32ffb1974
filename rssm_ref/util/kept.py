"""Forward intermediates handed from a fused primitive to its VJP.

An autograd primitive returns one array, and its VJP maker receives only that array
(``ans``) and the arguments; recomputing a fused forward pass inside the VJP would cost
a second forward per training step. A traced call therefore parks its intermediates
here under ``id(ans)``; the VJP maker, which autograd calls right after the forward
while building the graph, takes them back (checking identity, so a stale entry is never
used) and keeps them in its closure. Untraced calls (evaluation) park nothing.

>>> import numpy as onp
>>> y = onp.zeros(2); park(y, {"a": 1})
>>> take(y), take(y)
({'a': 1}, None)
"""

_PARKED = {}


def park(ans, cache):
    """Hold ``cache`` for the VJP of the call that returned ``ans`` (one at a time)."""
    _PARKED.clear()
    _PARKED[id(ans)] = (ans, cache)


def take(ans):
    """The cache parked for ``ans``, or None (then the VJP recomputes the forward)."""
    kept = _PARKED.pop(id(ans), None)
    return kept[1] if kept is not None and kept[0] is ans else None
