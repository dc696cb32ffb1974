#!/usr/bin/env python
"""Regenerate the small example files shipped in examples/ (deterministic, seeded).

    python examples/make_examples.py

writes, for each model, ``<model>_params.npz`` and ``<model>_inputs.npz`` in the format
of docs/formats.md, small enough to run in well under a second:

    python cli.py forward --model lti --params examples/lti_params.npz \
        --inputs examples/lti_inputs.npz --out lti_out.npz --grads
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from rssm_ref.oracle import formats, sample  # noqa: E402

EXAMPLES = {
    # model: (init_params kwargs, init_inputs kwargs)
    "lti": (dict(form="tf", m=2, p=2, order=3), dict(batch=2, L=64)),
    "residual": (dict(form="tf", m=2, order=4, order_r=4), dict(batch=2, L=64)),
    "selective": (dict(m=4, n=8), dict(batch=2, L=64)),
}


def main(folder=HERE):
    written = []
    for model, (pkw, ukw) in EXAMPLES.items():
        P = sample.init_params(model, seed=0, **pkw)
        U = sample.init_inputs(model, P, seed=1, **ukw)
        for kind, arrays in (("params", P), ("inputs", U)):
            path = os.path.join(folder, f"{model}_{kind}.npz")
            formats.save_npz_atomic(path, arrays)
            written.append(path)
    return written


if __name__ == "__main__":
    for p in main():
        print("wrote", os.path.relpath(p))
