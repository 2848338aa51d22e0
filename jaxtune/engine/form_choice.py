"""Choosing an execution form: the candidates worth measuring, and measuring them in a budget.

``train.execution = "auto"`` (:mod:`jaxtune.engine.prepare`) asks :func:`candidates` for the
forms that suit the backend and the model (:func:`has_convolution`), then :func:`choose`
measures them in order while its budget lasts (:func:`time_calls`); the fastest wins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
from jax.extend import core as jax_core

from jaxtune.engine.execution import Form

__all__ = ["Measured", "candidates", "choose", "has_convolution", "time_calls"]

#: A measurement times calls for at least this many seconds (after one warm-up call, unless
#: a single call already lasts that long).
MIN_TIMING_S = 0.2

#: No more trials than this per device are unrolled into one program (compile time grows
#: with every unrolled trial).
MAX_UNROLLED_TRIALS = 16

#: Steps per loop iteration of the partly unrolled scan ``auto`` measures (after the plain
#: scan) for one dense trial per CPU device: ``scan(unroll=4)/unroll``. For one digits-MLP
#: trial it took 0.91-1.05x the time of the plain scan in three runs, which is this machine's
#: noise; with 8 vmapped trials 0.99-1.04x (benchmarks/results/scan_unroll_cpu.json). It wins
#: where a loop iteration's own cost shows; ``auto`` keeps it only if it measures 3% faster.
SCAN_UNROLL = 4


def has_convolution(fn: Callable, *args: Any) -> bool:
    """Whether tracing ``fn(*args)`` meets a convolution (at any depth of the jaxpr)."""
    jaxpr = jax.make_jaxpr(fn)(*args)

    def walk(jx) -> bool:
        for eqn in jx.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                return True
            for sub in jax_core.jaxprs_in_params(eqn.params):
                if walk(sub):
                    return True
        return False

    return walk(jaxpr.jaxpr)


def candidates(
    backend: str, convolution: bool, per_device: int, *, large: bool = False
) -> list[Form]:
    """The forms worth measuring, the likeliest winner first (``auto`` runs the first one
    without measuring when measuring cannot pay for itself).

    On a CPU, scans are pruned for convolutional models (XLA:CPU runs a convolution's backward
    pass slowly inside any loop body) and vmap is measured against unrolled trials (vmapped
    kernels become one grouped convolution). On GPUs and TPUs a scan costs nothing; vmapped
    convolutions are measured against ``lax.map``. Unrolling is pruned past
    :data:`MAX_UNROLLED_TRIALS` trials per device; with one trial per device, ``unroll`` is
    exactly the solo program (no batch axis at all), so it is the only trial axis kept; a CPU
    then also measures the scan partly unrolled (:data:`SCAN_UNROLL`). ``large`` trials
    (:func:`jaxtune.engine.compile.fit_memory`) on a CPU try ``host/unroll`` first: each trial
    its own ops, which XLA runs side by side on the cores.
    """
    one = per_device == 1
    unroll = per_device <= MAX_UNROLLED_TRIALS
    if backend == "cpu":
        if convolution:
            if one:
                return [Form("host", trials="unroll")]
            out = [Form("host", trials="unroll")] if unroll else []
            return [*out, Form("host"), Form("host", trials="map")]
        if one:
            partly = Form("scan", trials="unroll", unroll=SCAN_UNROLL)
            return [Form("scan", trials="unroll"), partly, Form("host", trials="unroll")]
        out = [Form(), Form("host")]
        if large and unroll:
            return [Form("host", trials="unroll"), *out]
        return [*out, Form("host", trials="unroll")] if unroll else out
    if one:
        return [Form("scan", trials="unroll"), Form("host", trials="unroll")]
    out = [Form()]
    if convolution:
        out.append(Form("scan", trials="map"))
    return [*out, Form("host")]


class Measured(NamedTuple):
    form: Form
    rates: dict[str, float]  # trial-steps per second of each measured form
    spent_s: float  # seconds spent compiling and timing candidates


def choose(
    forms: Sequence[Form],
    measure: Callable[[Form], tuple[float, float, float]],
    budget_s: float,
    *,
    work: Callable[[Form], float],
    rate_guess: float,
    compile_guess: float,
) -> Measured:
    """Measure candidates in order while the budget lasts; the fastest wins.

    ``measure(form) -> (trial-steps per second, seconds timing, seconds compiling)`` compiles
    and times one form; ``work(form)`` is the trial-steps one of its calls runs. Before each
    measurement its cost is predicted: a compile as long as the costliest so far (at first
    ``compile_guess``) plus two calls at the best rate measured so far (at first
    ``rate_guess``), at least :data:`MIN_TIMING_S`. Nothing is measured unless the first two
    candidates fit the budget (one measurement alone decides nothing); a candidate that would
    overrun it is skipped. The first candidate's compile is free (its programs are needed if
    it wins). A later candidate must beat the leader by 3% to replace it (timings are noisy).
    """

    def predicted(form: Form, rate: float, compile_s: float) -> float:
        return compile_s + max(MIN_TIMING_S, 2 * work(form) / max(rate, 1e-9))

    first, rest = forms[0], list(forms[1:])
    opening = predicted(first, rate_guess, 0.0)
    if not rest or opening + predicted(rest[0], rate_guess, compile_guess) > budget_s:
        return Measured(first, {}, 0.0)
    rates: dict[str, float] = {}
    rate, timing_s, compile_s = measure(first)
    rates[str(first)] = rate
    spent, costliest, best = timing_s, max(compile_s, compile_guess), first
    for form in rest:
        if spent + predicted(form, max(rates.values()), costliest) > budget_s:
            continue
        rate, timing_s, compile_s = measure(form)
        rates[str(form)] = rate
        spent += timing_s + compile_s
        costliest = max(costliest, compile_s)
        if rate > 1.03 * rates[str(best)]:
            best = form
    return Measured(best, rates, spent)


def time_calls(call: Callable[[Any], Any], state: Any, work: float) -> float:
    """Units of ``work`` per second of ``state = call(state)``: a single call when it lasts
    :data:`MIN_TIMING_S` or more, else one warm-up call and then calls for at least that long."""
    t0 = time.perf_counter()
    state = jax.block_until_ready(call(state))
    first = time.perf_counter() - t0
    if first >= MIN_TIMING_S:
        return work / first
    calls, t0 = 0, time.perf_counter()
    while True:
        state = jax.block_until_ready(call(state))
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= MIN_TIMING_S or calls >= 100:
            return calls * work / elapsed if elapsed > 0 else math.inf
