"""The oracle: one file format, ``forward``, ``init``, ``verify`` and ``golden``.

Modules
-------
formats     the file format (keys, symbolic shapes, dtypes) and its checked loaders
forward     float64 outputs, intermediates and gradients; writes self-describing files
sample      valid random params and inputs (``init``)
precision   the oracle rerun in emulated float32/float16/bfloat16 (verify's yardstick)
verify      per-tensor verdicts against a reference, in the candidate's precision
golden      the frozen suite of named cases and its tamper-proof check
mamba       a Mamba layer's own parameters (A_log, x_proj, dt_proj, D) on the selective core
            (--model mamba), and the whole Mamba-1 layer (--model mamba-block); --model ssd
            is Mamba-2's SSD core (rssm_ref.ssd) under mamba_chunk_scan_combined's names,
            --model mamba2-block the whole Mamba-2 layer (rssm_ref.mamba2_block)
diagnose    which conventions (discretization, output, D, layout, gate) a candidate follows
slips       the slips a port of the Mamba-1 layer, the SSD core or the Mamba-2 layer
            makes, as diagnose names them

>>> from rssm_ref.oracle import formats
>>> formats.MODELS
('lti', 'residual', 'selective', 'mamba', 'mamba-block', 'mamba2-block', 'ssd')
"""
