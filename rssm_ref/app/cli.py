#!/usr/bin/env python
"""rssm-ref command line: a thin door that maps click options to config objects and
calls the package. Bad input exits with code 2 and one line on stderr.

Three ways in, the same commands: ``rssm-ref <command>`` (the console script of
``pip install``), ``python -m rssm_ref <command>``, and ``python cli.py <command>`` from
a clone (./cli.py imports this module). This is the only module that imports click.

One vocabulary for every command:
- ``--json``: the command's result as one JSON object on stdout (progress and messages
  stay on stderr); a failure prints ``{"error": ..., "exit_code": ...}`` on stdout as
  well as its line on stderr, with the same exit code (2 bad input, 1 failed check).
- ``--json-out PATH``: where a command also writes its JSON to a file (bench).
- ``--out``: the output file or folder itself is created (written atomically); its
  parent folder must exist. No command creates parent folders.
- ``--gate`` (residual), ``--discretization`` and ``--output`` (selective, mamba;
  ``--output`` also residual), ``--layout``: the conventions, with the same names on
  forward, reproduce and explain; ``diagnose`` finds which of them a candidate follows.
- An option that does nothing for the chosen model or mode is refused (exit 2).
"""
import json
import re
import sys

import click
from rssm_ref.app.bench import (bench_document, check_figures, format_bench, judge_peers,
                                 load_peers,
                                parse_size, run_bench, write_json)
from rssm_ref.experiments.beyond import ExperimentConfig, format_results, run_experiment
from rssm_ref.experiments.explain import explain, ExplainConfig
from rssm_ref.experiments.reproduce import format_table, reproduce, ReproduceConfig
from rssm_ref.oracle.diagnose import diagnose_files
from rssm_ref.oracle.forward import ForwardConfig, run_forward
from rssm_ref.oracle.golden import GoldenConfig, run_golden
from rssm_ref.oracle.sample import InitConfig, run_init
from rssm_ref.oracle.verify import run_verify, VerifyConfig
from rssm_ref.util.paths import check_outputs
from rssm_ref.util.progress import Progress
from rssm_ref.util.version import VERSION
from rssm_ref.xp.backend import get_backend_name, namespace


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
        raise UserError(_message(exc)) from None


def _message(exc):
    """The one line for an exception: a KeyError's key without repr quotes, an OSError as
    'path: what went wrong' (never '[Errno 21] ...: '.tmp-x' -> 'dir''), else the text."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.strerror:
        path = exc.filename2 or exc.filename
        what = exc.strerror[0].lower() + exc.strerror[1:]
        return f"{path}: {what}" if path else what
    return " ".join(str(exc).split())


def _first_sentence(text):
    """The first sentence of a help text, whole (click's own short help cuts at ~45
    characters, mid-sentence)."""
    para = " ".join(text.strip().split("\n\n")[0].split())
    m = re.search(r"[.;](\s|$)", para)
    return (para[: m.start()] if m else para).rstrip(".") + "."


class _Main(click.Group):
    """The command group: whole first sentences in the command list, and ``--json``
    failures as a JSON object on stdout."""

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.short_help or _first_sentence(cmd.help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        if "--json" not in argv or not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(json.dumps({"error": exc.format_message(), "exit_code": exc.exit_code}))
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo(json.dumps({"error": "aborted", "exit_code": 1}))
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, "--version", prog_name="rssm-ref", message="%(prog)s %(version)s")
def main():
    """rssm-ref: the float64 reference oracle for the Residual SSM and Mamba's selective core.

    Every command takes --help. Exit codes: 0 done or passed, 1 a check failed, 2 bad
    input (one line on stderr naming the flag, file and key). --json prints the result
    (or the error) as JSON on stdout.
    """


def _json_out(obj):
    """Print ``obj`` as one JSON object on stdout (the --json convention)."""
    click.echo(json.dumps(obj, indent=1, default=_json_default))


def _json_default(x):
    import numpy
    if isinstance(x, numpy.generic):
        return x.item()
    if isinstance(x, numpy.ndarray):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    return str(x)


def _given(name):
    """True when option ``name`` was typed on the command line (not its default)."""
    from click.core import ParameterSource
    ctx = click.get_current_context()
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)


def _refuse_unused(flags, reason):
    """Exit 2 naming the first option in ``flags`` ({param name: flag}) that was typed
    but does nothing (``reason``)."""
    for name, flag in flags.items():
        if _given(name):
            raise UserError(f"{flag}: does nothing {reason} (leave it out)")


# --- commands are registered below this line ---------------------------------------

# oracle commands: forward, init, verify, golden. Formats: docs/formats.md.
_MODELS = click.Choice(["lti", "residual", "selective", "mamba", "mamba-block", "mamba2-block",
                        "ssd"])
# the array module (docs/11-backends.md); default: $RSSM_REF_BACKEND, else numpy (the autograd cores)
_BACKEND = click.option(
    "--backend", type=click.Choice(["numpy", "cupy", "array_api_strict"]), default=None,
    help="Array module for the sequence work: numpy (default, or $RSSM_REF_BACKEND), cupy "
         "(GPU, pip install '.[gpu]'), array_api_strict (CPU, the standard's check).")


def _report(result, as_json):
    """Print a package report and exit 1 when it did not pass."""
    click.echo(result.to_json() if as_json else result.to_text())
    if not result.passed:
        click.get_current_context().exit(1)


@main.command("forward")
@click.option("--model", type=_MODELS, required=True, help="Which model the params describe.")
@click.option("--params", "params_path", required=True, metavar="P.npz",
              help="Params file: .npz or .safetensors (told apart by content).")
@click.option("--inputs", "inputs_path", required=True, metavar="U.npz",
              help="Inputs file: u (batch, L, m) or tokens, optional dy.")
@click.option("--out", "out_path", required=True, metavar="O.npz", help="Output file.")
@click.option("--path", type=click.Choice(["recurrent", "fft"]), default=None,
              help="Computation path (default recurrent).")
@click.option("--gate", type=click.Choice(["euler", "zoh"]), default=None,
              help="Residual gate: eq. (5) or Remark 3.1's ZOH (default euler).")
@click.option("--discretization", type=click.Choice(["zoh", "euler"]), default=None,
              help="Selective/mamba B: eq. (3b) ZOH or mamba_ssm's Euler (default zoh; "
                   "mamba: euler).")
@click.option("--output", type=click.Choice(["before", "after"]), default=None,
              help="Selective/mamba y read before (eq. (2)) or after the state update (default "
                   "before; mamba: after); residual y(0..L-1) (before) or y(1..L) (after, "
                   "default).")
@click.option("--layout", type=click.Choice(["channel-last", "channel-first", "heads-flat"]),
              default=None,
              help="u, dy and the sequence outputs as (batch, L, m) (default) or (batch, m, L) "
                   "(channel-first: time last, as mamba_ssm); ssd: heads-flat, HF's x, z, y "
                   "(batch, L, h·p) and B, C (batch, L, g·n).")
@click.option("--allow-unstable", is_flag=True, help="Accept poles on/outside |z| = 1.")
@click.option("--grads", is_flag=True, help="Add grad_u and grad_<key> of sum(y * dy).")
@click.option("--intermediates", is_flag=True,
              help="Add the model's internal signals (every model but lti, which has none).")
@click.option("--prefix", default=None, metavar="PREFIX",
              help="Read one layer of a whole-model params file: the keys that start with "
                   "PREFIX (e.g. backbone.layers.3.mixer.), without it.")
@click.option("--step", is_flag=True,
              help="mamba-block, mamba2-block: one decoding step (Mamba.step, Mamba2.step) from "
                   "the inputs' conv_state and ssm_state on hidden_states (batch, 1, d).")
@click.option("--dt-softplus", is_flag=True,
              help="ssd: dt' = softplus(dt + dt_bias), mamba_chunk_scan_combined's dt_softplus.")
@click.option("--dt-limit", type=float, nargs=2, default=None, metavar="LO HI",
              help="ssd, mamba2-block: clamp dt' to [LO, HI] (HI may be inf; default none, "
                   "(0, inf)).")
@click.option("--chunk-size", type=int, default=None, metavar="Q",
              help="ssd, mamba2-block: chunk length (default 256, Mamba-2's; y and the "
                   "gradients do not depend on it beyond round-off, chunk_states do).")
@click.option("--ngroups", type=int, default=None, metavar="G",
              help="mamba2-block: groups of heads sharing B and C (Mamba2's ngroups; the "
                   "shapes give only ngroups x d_state, so this or --n is required); "
                   "ssd with --layout heads-flat: the g of B, C (batch, L, g·n) (HF's n_groups; "
                   "not needed when initial_states give n).")
@click.option("--n", "d_state", type=int, default=None, metavar="N",
              help="mamba2-block: the state size n (d_state) instead of --ngroups (both: they "
                   "must agree).")
@click.option("--norm-before-gate", is_flag=True,
              help="mamba2-block: normalize y, then gate by silu(z) (Mamba2's "
                   "norm_before_gate=True; default: gate, then normalize).")
@click.option("--norm-group-size", type=int, default=None, metavar="S",
              help="mamba2-block: channels per group of the gated RMSNorm (default "
                   "d_ssm / ngroups, Mamba2's; d_ssm: one group over the whole width).")
@click.option("--eps", type=float, default=None,
              help="mamba2-block: the gated RMSNorm's epsilon (default 1e-5, Mamba2's).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@_BACKEND
def forward_cmd(model, params_path, inputs_path, out_path, path, gate, discretization, output,
                layout, allow_unstable, grads, intermediates, prefix, step, dt_softplus,
                dt_limit, chunk_size, ngroups, d_state, norm_before_gate, norm_group_size, eps,
                as_json, backend):
    """Compute the float64 reference outputs (and gradients) for a params/inputs pair.

    --model mamba takes a Mamba layer's own keys (A_log, D, x_proj.weight, dt_proj.weight,
    dt_proj.bias) and gives grad_<key> for them (docs/12-verify-mamba.md). --model
    mamba-block takes a whole Mamba-1 layer's state_dict (in_proj, conv1d, x_proj, dt_proj,
    A_log, D, out_proj) on hidden_states, and returns y, conv_state and ssm_state.
    --model ssd takes Mamba-2's SSD core under mamba_chunk_scan_combined's names (A_log or
    A, D, dt_bias; inputs x, dt, B, C, z, initial_states) and returns y and final_states
    (--intermediates: chunk_states); --layout heads-flat reads and writes HF's flat
    (batch, L, h·p) and (batch, L, g·n) tensors (--ngroups G). --model mamba2-block takes
    a whole Mamba-2 layer's state_dict (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj) with --ngroups (or
    --n) on hidden_states, and returns y, conv_state and ssm_state.
    """
    config = ForwardConfig(model=model, path=path, gate=gate, discretization=discretization,
                           output=output, allow_unstable=allow_unstable, grads=grads,
                           intermediates=intermediates, backend=backend, layout=layout,
                           step=step, prefix=prefix, dt_softplus=dt_softplus,
                           dt_limit=tuple(dt_limit) if dt_limit else None,
                           chunk_size=chunk_size, ngroups=ngroups, d_state=d_state,
                           norm_before_gate=norm_before_gate, norm_group_size=norm_group_size,
                           eps=eps)
    info = run_guarded(run_forward, config, params_path, inputs_path, out_path)
    if as_json:
        _json_out(info)
        return
    for note in info["notes"]:
        click.echo(f"note: {params_path}: {note}", err=True)
    click.echo(f"wrote {info['out']}: {', '.join(info['keys'])} (y shape {info['y_shape']}, "
               f"backend {info['backend']})")


@main.command("init")
@click.option("--model", type=_MODELS, required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, metavar="P.npz", help="Params file to write.")
@click.option("--inputs-out", default=None, metavar="U.npz", help="Also write inputs here.")
@click.option("--form", type=click.Choice(["tf", "ss"]), default=None,
              help="lti/residual: transfer function (default) or state space.")
@click.option("--m", type=int, default=None, help="Input/model width.")
@click.option("--p", type=int, default=None,
              help="lti output width; ssd, mamba2-block head dimension.")
@click.option("--order", type=int, default=None, help="lti/Σ order.")
@click.option("--order-r", type=int, default=None, help="Σ_r order (residual).")
@click.option("--n", type=int, default=None,
              help="Selective/mamba/ssd/mamba2-block state size (d_state).")
@click.option("--heads", type=int, default=None, help="ssd: number of heads h (default 4).")
@click.option("--ngroups", "groups", type=int, default=None,
              help="ssd, mamba2-block: groups g of heads sharing B and C (default 2; "
                   "mamba2-block 1; g divides h).")
@click.option("--vocab", type=int, default=None, help="Add an embedding (vocab, m).")
@click.option("--batch", type=int, default=2, show_default=True,
              help="Sequences in the inputs (with --inputs-out).")
@click.option("--length", type=int, default=32, show_default=True,
              help="Sequence length L of the inputs (with --inputs-out).")
@click.option("--no-dy", is_flag=True, help="Leave the cotangent dy out of the inputs.")
@click.option("--layout", type=click.Choice(["channel-last", "channel-first", "heads-flat"]),
              default=None,
              help="Inputs channel-last (batch, L, m) (default) or channel-first (batch, m, L), "
                   "ssd: or heads-flat (HF's (batch, L, h·p)), as forward --layout reads them "
                   "(with --inputs-out).")
@click.option("--tokens", is_flag=True, help="Inputs as token ids (needs --vocab, --inputs-out).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def init_cmd(model, seed, out, inputs_out, form, m, p, order, order_r, n, heads, groups, vocab,
             batch, length, no_dy, layout, tokens, as_json):
    """Write valid random params (and inputs) in the file format, seeded."""
    if inputs_out is None:
        _refuse_unused({"batch": "--batch", "length": "--length", "no_dy": "--no-dy",
                        "tokens": "--tokens", "layout": "--layout"}, "without --inputs-out U.npz")
    config = InitConfig(model=model, seed=seed, form=form, m=m, p=p, order=order,
                        order_r=order_r, n=n, vocab=vocab, batch=batch, length=length,
                        dy=not no_dy, tokens=tokens, heads=heads, groups=groups,
                        layout=layout)
    summary = run_guarded(run_init, config, out, inputs_out)
    if as_json:
        _json_out({"params": out, "inputs": inputs_out, "summary": summary})
        return
    click.echo("wrote " + summary)


@main.command("verify")
@click.option("--reference", default=None, metavar="O.npz", help="forward/golden output.")
@click.option("--candidate", default=None, metavar="C.npz", help="Your tensors (y, grad_*, ...).")
@click.option("--golden", default=None, metavar="DIR", help="A golden suite directory.")
@click.option("--candidates", default=None, metavar="DIR2", help="<case>.npz per golden case.")
@click.option("--precision", type=click.Choice(["float64", "float32", "float16", "bfloat16"]),
              default=None, help="The candidate's arithmetic (default: its dtype, float32 "
                                 "for a float32 file; bfloat16 must be given).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def verify_cmd(reference, candidate, golden, candidates, precision, as_json):
    """Judge a candidate against the oracle; exit 0 pass, 1 mismatch, 2 bad input."""
    config = VerifyConfig(reference=reference, candidate=candidate, golden=golden,
                          candidates=candidates, precision=precision)
    _report(run_guarded(run_verify, config), as_json)


@main.command("diagnose")
@click.option("--reference", required=True, metavar="O.npz", help="forward/golden output.")
@click.option("--candidate", required=True, metavar="C.npz", help="Your tensors (y, grad_*, ...).")
@click.option("--precision", type=click.Choice(["float64", "float32", "float16", "bfloat16"]),
              default=None, help="The precision your tensors claim (default: their dtype); a "
                                 "match only at a coarser one exits 1.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def diagnose_cmd(reference, candidate, precision, as_json):
    """Find which conventions your tensors follow; exit 0 a match, 1 none, 2 bad input.

    Recomputes the reference under every discretization, output, D-or-not and layout
    (residual: gate and y(1..L) vs y(0..L-1); mamba-block: each slip a port of the layer
    makes, one at a time, such as z and x swapped or the conv flipped; ssd: each slip a
    port of Mamba-2's SSD core makes, such as heads paired with groups the wrong way, and
    the heads-flat layout), ranks them, and
    reports the best one, the precision it matches at, and the forward flags that
    reproduce it. A slip is exit 1, named with what to fix.
    """
    _report(run_guarded(diagnose_files, reference, candidate, precision), as_json)


@main.command("golden")
@click.option("--out", default=None, metavar="DIR", help="Write the golden suite here.")
@click.option("--check", default=None, metavar="DIR", help="Recompute and checksum a suite.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@_BACKEND
def golden_cmd(out, check, as_json, backend):
    """Write the golden suite, or check one (exit 2 tampered, 1 numeric mismatch)."""
    _report(run_guarded(run_golden, GoldenConfig(out=out, check=check, backend=backend)), as_json)


# experiments: reproduce Tables 1 and 2 (docs/recipe.md).
def _deprecated_alias(new_value, old_value, new_flag, old_flag):
    """A hidden old flag name: its value when given (with a note on stderr), refused when
    it disagrees with the new one."""
    if old_value is None:
        return new_value
    click.echo(f"note: {old_flag} is deprecated; use {new_flag}", err=True)
    if _given(new_flag.lstrip("-").replace("-", "_")) and new_value != old_value:
        raise UserError(f"{old_flag}: {old_value!r} disagrees with {new_flag} {new_value!r} "
                        f"(expected only {new_flag})")
    return old_value


@main.command("reproduce")
@click.option("--task", type=click.Choice(["induction", "extended"]), default="induction",
              show_default=True, help="Table 1 (induction) or Table 2 (extended).")
@click.option("--model", type=click.Choice(["residual", "selective", "both"]), default="both",
              show_default=True)
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds, e.g. 0,1,2.")
@click.option("--steps", type=int, default=0,
              help="Gradient steps per model and seed in all, restart candidates included "
                   "(default: the recipe, residual 27000 = 3 x 1000 + 24000, selective 10000).")
@click.option("--quick", is_flag=True,
              help="A smoke run (seconds) that checks the pipeline; its numbers are "
                   "marked as such everywhere.")
@click.option("--out", default=None, metavar="DIR",
              help="Run folder (created; its parent must exist). Default: results-<task>, "
                   "one per task.")
@click.option("--gate", type=click.Choice(["euler", "zoh"]), default="euler", show_default=True,
              help="Residual gate: eq. (5) or Remark 3.1's exact ZOH.")
@click.option("--discretization", type=click.Choice(["zoh", "euler"]), default=None,
              help="Selective B: eq. (3b) ZOH (paper) or Euler (mamba_ssm). Default: the "
                   "recipe's (short: zoh; searched: euler; --paper-exact: zoh).")
@click.option("--output", type=click.Choice(["before", "after"]), default="before",
              show_default=True, help="Selective y before (eq. (2)) or after (mamba_ssm) the update.")
@click.option("--selective-recipe", type=click.Choice(["short", "searched"]), default="short",
              show_default=True,
              help="short: 10000 steps, the paper's conventions (the default run's two "
                   "minutes). searched: the winner of docs/recipe.md's search (Euler B, the "
                   "D skip, 50000 steps; ~5x the training time).")
@click.option("--selective-discretization", type=click.Choice(["zoh", "euler"]), default=None,
              hidden=True)
@click.option("--selective-output", type=click.Choice(["before", "after"]), default=None,
              hidden=True)
@click.option("--eval-n", type=int, default=1000, show_default=True, help="Sequences per length.")
@click.option("--resume", is_flag=True, help="Continue from checkpoints in --out.")
@click.option("--paper-exact", is_flag=True,
              help="Train the paper's models as written, without the recipe's additions "
                   "(gate gain and bias, reflection bound, selective readout; see the "
                   "deviations table in docs/recipe.md).")
@click.option("--workers", type=int, default=0, show_default=True,
              help="Train and evaluate the runs in this many processes (0: one per core, up "
                   "to 2; a smoke run or trainings under 2000 steps: 1). The same numbers "
                   "either way.")
@click.option("--json", "as_json", is_flag=True, help="Print results.json's content on stdout.")
@_BACKEND
def reproduce_cmd(task, model, seeds, steps, quick, out, gate, discretization, output,
                  selective_recipe, selective_discretization, selective_output, eval_n,
                  resume, paper_exact, workers, as_json, backend):
    """Train at L = 16 and print accuracy at L = 16..1024 beside the paper's table.

    Progress goes to stderr (a bar on a terminal, a line per 10 % or 30 s otherwise) and
    to DIR/progress.log.
    """
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip() != "")
    except ValueError:
        raise UserError(f"--seeds: {seeds!r} (expected comma-separated integers, e.g. 0,1,2)") from None
    discretization = _deprecated_alias(discretization, selective_discretization,
                                       "--discretization", "--selective-discretization")
    output = _deprecated_alias(output, selective_output, "--output", "--selective-output")
    if quick:
        _refuse_unused({"eval_n": "--eval-n"}, "with --quick (a smoke run evaluates 100 "
                       "sequences per length)")
    if model == "residual":
        _refuse_unused({"discretization": "--discretization", "output": "--output",
                        "selective_recipe": "--selective-recipe"},
                       "with --model residual (selective conventions)")
    if model == "selective":
        _refuse_unused({"gate": "--gate"}, "with --model selective (the residual gate)")
    models = ("residual", "selective") if model == "both" else (model,)
    backend = backend or run_guarded(get_backend_name)
    config = run_guarded(ReproduceConfig, task=task, models=models, seeds=seed_list, steps=steps,
                         quick=quick, out=out or "", gate=gate, eval_n=eval_n, resume=resume,
                         backend=backend, discretization=discretization,
                         output=output, paper_exact=paper_exact, workers=workers,
                         selective_recipe=selective_recipe)
    progress = Progress.to_stderr()
    results = run_guarded(reproduce, config, progress)
    if as_json:
        _json_out(results)
        return
    click.echo("")
    click.echo(format_table(results))
    out = config.out
    click.echo(f"\nwrote {out}/results.json, {out}/accuracy.png and {out}/progress.log "
               f"(wall {results['wall_seconds']:.0f} s)")


# beyond the paper (docs/13-beyond-the-paper.md): lengths, nu_sweep, window, zoh_gate, cost.
@main.command("experiment")
@click.argument("name", metavar="NAME")
@click.option("--seeds", default=None, help="Comma-separated seeds (default 0,1,2; --quick: 0).")
@click.option("--steps", type=int, default=0,
              help="Gradient steps per training in all, restart candidates included "
                   "(default: reproduce's recipe of each model).")
@click.option("--quick", is_flag=True,
              help="A smoke run (seconds): tiny grids, steps and evaluations; marked as such "
                   "everywhere.")
@click.option("--out", default=None, metavar="DIR",
              help="Run folder (created; its parent must exist). Default: results-<NAME>.")
@click.option("--eval-n", type=int, default=0,
              help="Sequences per length (default 1000; --quick: 20).")
@click.option("--checkpoints", default="results-{task}", show_default=True, metavar="TEMPLATE",
              help="reproduce's run folders (where it writes by default), {task} = induction "
                   "| extended. lengths: their checkpoints residual-seed<k>.npz (absent ones "
                   "are trained here); cost: their results.json, whose accuracies are joined.")
@click.option("--results-from", default="results-{name}", show_default=True, metavar="TEMPLATE",
              help="cost: the other experiments' folders, {name} = lengths | nu_sweep | "
                   "window | zoh_gate, whose accuracies are joined.")
@click.option("--paper-exact", is_flag=True,
              help="Train the paper's model, without the recipe's additions (as reproduce).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="nu_sweep, window: run the trainings in this many processes (the same "
                   "numbers; a killed run continues from its checkpoints).")
@click.option("--json", "as_json", is_flag=True, help="Print results.json's content on stdout.")
def experiment_cmd(name, seeds, steps, quick, out, eval_n, checkpoints, results_from,
                   paper_exact, workers, as_json):
    """Run one experiment beyond the paper: lengths, nu_sweep, window, zoh_gate or cost.

    lengths: the Residual SSM trained at L = 16 evaluated at L = 2048 .. 65536, beside the
    accuracy its gate's leak predicts. nu_sweep: nu_r against the trigger length.
    window: the Selective SSM reading a causal window of w inputs. zoh_gate: Tables 1
    and 2 with Remark 3.1's gate. cost: parameters and time per training step of every
    model. Writes DIR/results.json, DIR/NAME.png and DIR/progress.log
    (docs/13-beyond-the-paper.md).
    """
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip() != "") if seeds else ()
    except ValueError:
        raise UserError(f"--seeds: {seeds!r} (expected comma-separated integers, e.g. 0,1,2)") from None
    if seeds is not None and not seed_list:
        raise UserError(f"--seeds: {seeds!r} (expected comma-separated integers, e.g. 0,1,2)")
    config = run_guarded(ExperimentConfig, name=name, seeds=seed_list, steps=steps, quick=quick,
                         out=out or "", eval_n=eval_n, checkpoints=checkpoints,
                         results_from=results_from, paper_exact=paper_exact,
                         workers=workers)
    if config.name not in ("nu_sweep", "window"):
        _refuse_unused({"workers": "--workers"}, f"for {config.name} (nu_sweep and window "
                       "only)")
    if config.name not in ("lengths", "cost"):
        _refuse_unused({"checkpoints": "--checkpoints"}, f"for {config.name} (lengths and "
                       "cost only)")
    if config.name != "cost":
        _refuse_unused({"results_from": "--results-from"}, f"for {config.name} (cost only)")
    if config.name == "cost":
        _refuse_unused({"eval_n": "--eval-n"}, "for cost (nothing is evaluated)")
    if config.name == "zoh_gate" and quick:
        _refuse_unused({"eval_n": "--eval-n"}, "for zoh_gate with --quick (reproduce's smoke "
                       "run evaluates 100 sequences per length)")
    results = run_guarded(run_experiment, config, Progress.to_stderr())
    if as_json:
        _json_out(results)
        return
    click.echo("")
    click.echo(format_results(results))
    o = config.out
    click.echo(f"\nwrote {o}/results.json, {o}/{config.name}.png and {o}/progress.log "
               f"(wall {results['wall_seconds']:.0f} s)")


# benchmarks (docs/bench.md): ratios against baselines timed in the same run.
@main.command("bench")
@click.option("--quick", is_flag=True,
              help="A smoke run: small sizes, 2 repeats (seconds); marked as such in the table "
                   "and the JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON on stdout.")
@click.option("--json-out", "json_path", default=None, metavar="PATH",
              help="Also write the rows as JSON to PATH (its folder must exist).")
@_BACKEND
@click.option("--backend-size", default=None, metavar="BATCHxL",
              help="Size of the backend_forward figure, e.g. 1000x65536 (default 100x65536).")
@click.option("--only", multiple=True, metavar="FIGURE", help="Run only these figures (repeatable).")
@click.option("--peers", is_flag=True,
              help="Also time the same training and evaluation workloads in JAX (jit) and "
                   "PyTorch (eager) where importable (pip install '.[peers]'), checked "
                   "against rssm-ref first; skipped with the reason otherwise.")
def bench_cmd(quick, as_json, json_path, backend, backend_size, only, peers):
    """Speed and memory as ratios against baselines timed in the same run."""
    import os
    backend = backend or run_guarded(get_backend_name)
    run_guarded(namespace, backend)
    size = run_guarded(parse_size, backend_size) if backend_size else None
    names = run_guarded(check_figures, only)
    run_guarded(check_outputs, [("--json-out", json_path)])   # not a directory, before timing
    if json_path and not os.path.isdir(os.path.dirname(os.path.abspath(json_path))):
        raise UserError(f"--json-out: {json_path}: folder "
                        f"{os.path.dirname(os.path.abspath(json_path))} does not exist "
                        "(expected an existing folder)")
    task = Progress.to_stderr().task("bench" + (" (smoke run)" if quick else ""), len(names),
                                     unit="figure")
    done = []

    def progress(name, row):
        done.append(name)
        task.update(len(done))
    rows = run_guarded(run_bench, quick=quick, progress=progress, only=names, backend=backend,
                       backend_size=size)
    task.close()
    if peers:
        peer_module = run_guarded(load_peers)
        for framework, (ok, why) in peer_module.available().items():
            if not ok:
                click.echo(f"note: --peers: {framework} skipped: {why}", err=True)
        rows = rows + judge_peers(run_guarded(peer_module.peer_rows, quick=quick))
    if json_path:
        run_guarded(write_json, rows, json_path, quick)
    if as_json:
        _json_out(bench_document(rows, quick))
        return
    click.echo(format_bench(rows, quick))
    if json_path:
        click.echo(f"wrote {json_path}")


# teaching (docs/index.md): one sequence through a model, step by step.
@main.command("explain")
@click.option("--model", type=click.Choice(["residual", "selective", "lti"]), default=None,
              help="The model explained (default: the one a reproduce checkpoint given as "
                   "--params names, else residual).")
@click.option("--task", type=click.Choice(["induction", "extended"]), default=None,
              help="The task the sequence is drawn from (default: a reproduce checkpoint's, "
                   "else induction).")
@click.option("--params", "params_path", default="", metavar="P.npz",
              help="Params in the oracle's format (from init, or your model's), or a reproduce "
                   "checkpoint (default: train a model here for --steps).")
@click.option("--checkpoint", default="", metavar="P.npz", hidden=True)
@click.option("--inputs", "inputs_path", default="", metavar="U.npz",
              help="Trace the first sequence of this inputs file (default: a task sequence when "
                   "the params hold an embedding for its tokens, else u ~ N(0, 1)).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--length", "L", type=int, default=32, show_default=True)
@click.option("--steps", type=int, default=3000, show_default=True,
              help="Training steps when no --params is given.")
@click.option("--gate", type=click.Choice(["euler", "zoh"]), default=None,
              help="Residual gate: eq. (5) (default) or Remark 3.1's exact ZOH.")
@click.option("--discretization", type=click.Choice(["zoh", "euler"]), default=None,
              help="Selective B: eq. (3b) ZOH (default) or Euler (mamba_ssm).")
@click.option("--output", type=click.Choice(["before", "after"]), default=None,
              help="Selective y before (eq. (2), default) or after the update.")
@click.option("--out", default="explain", show_default=True, metavar="DIR",
              help="Folder for the figures, trace.json and trace.npz (created; its parent must "
                   "exist).")
@click.option("--json", "as_json", is_flag=True, help="Print trace.json's content on stdout.")
def explain_cmd(model, task, params_path, checkpoint, inputs_path, seed, L, steps, gate,
                discretization, output, out, as_json):
    """Trace one sequence through a model (t, token, y_s, r, s, y) and plot what each part does.

    Figures: the gate s(t) (residual) or the step size Δ_t (selective) along the
    sequence, and the poles/zeros and impulse responses of the LTI systems. Training
    progress, when a model is trained here, goes to stderr and DIR/progress.log.
    """
    if checkpoint:
        click.echo("note: --checkpoint is deprecated; use --params", err=True)
    if params_path or checkpoint:
        _refuse_unused({"steps": "--steps"}, "with --params (nothing is trained)")
    if inputs_path:
        _refuse_unused({"L": "--length", "task": "--task"}, "with --inputs (the sequence "
                       "comes from the file)")
    # the model may come from the checkpoint: the options are judged against the resolved one
    config = run_guarded(ExplainConfig, model=model, task=task, params=params_path,
                         checkpoint=checkpoint, inputs=inputs_path, seed=seed, out=out, L=L,
                         steps=steps, gate=gate, discretization=discretization, output=output)
    which = (f"with --model {config.model}" if model or not config.params_path else
             f"for the {config.model} model of {config.params_path}")
    if config.model != "residual":
        _refuse_unused({"gate": "--gate"}, f"{which} (the residual gate)")
    if config.model != "selective":
        _refuse_unused({"discretization": "--discretization", "output": "--output"},
                       f"{which} (selective conventions)")
    res = run_guarded(explain, config, Progress.to_stderr())
    if as_json:
        with open(res["files"][0], encoding="utf-8") as fh:
            click.echo(fh.read().rstrip("\n"))
        return
    click.echo(res["trace"])
    for f in res["figures"] + res["files"]:
        click.echo(f"wrote {f}")


if __name__ == "__main__":
    sys.exit(main())
