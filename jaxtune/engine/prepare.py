"""Preparing populations: group the trials, settle the call size, cut calls, pick forms, compile.

A :class:`Preparer` is what one sweep's populations share: the devices, the splits already on
them, the trials per call (settled once, for the first population), the call sizes and the
execution forms compiled so far. In order, for a population:

1. the trials are bound and grouped (:func:`jaxtune.engine.plan.group`);
2. the trials per call are settled (``train.max_trials_per_call``; ``"auto"`` compiles the
   largest group's call and fits calls to memory, :func:`jaxtune.engine.compile.fit_memory`);
3. the groups are cut into calls (:func:`jaxtune.engine.plan.cut_calls`);
4. each group gets its execution form (``train.execution``: a recorded choice, a fixed form,
   or ``"auto"``, which measures candidates, :func:`jaxtune.engine.form_choice.choose`);
5. every call's programs are compiled.

Nothing is written and nothing trains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import parallel
from jaxtune.config import SweepConfig
from jaxtune.data import as_source, num_examples
from jaxtune.engine import form_choice
from jaxtune.engine.bind import Binder
from jaxtune.engine.compile import (
    CompiledCall,
    call_memory_bytes,
    fit_memory,
    make_mesh,
    state_bytes,
)
from jaxtune.engine.execution import Form, parse_form
from jaxtune.engine.feed import HostEval, HostFeed
from jaxtune.engine.form_choice import Measured
from jaxtune.engine.placement import Placed, place
from jaxtune.engine.plan import CallSpec, Plan, call_arrays, cut_calls, group, trial_sharding
from jaxtune.engine.population import Call, Population

__all__ = ["DIRECT_TRIALS", "PROBE_TRIALS", "SPLITS", "Preparer"]

#: The evaluated splits, in order (``test`` only where a task has one).
SPLITS = ("valid", "test")

#: ``train.max_trials_per_call = "auto"`` compiles a group of up to this many trials per device
#: in one call first (most groups fit; then nothing compiles twice); larger groups are probed
#: with calls of :data:`PROBE_TRIALS` per device, and the memory analysis decides the size.
DIRECT_TRIALS = 64

#: Trials per device of the probe call for groups larger than :data:`DIRECT_TRIALS`.
PROBE_TRIALS = 8

#: ``auto`` spends at most this fraction of a sweep's estimated run time measuring forms ...
MEASURE_FRACTION = 0.1
#: ... and never more than this many seconds.
MEASURE_CAP_S = 60.0

#: Forms chosen by measurement in this process, by what the programs depend on (a second sweep
#: of the same shapes measures nothing).
_CHOSEN: dict[tuple, Measured] = {}


class Preparer:
    """Prepares the populations of one sweep (see the module docstring).

    Args:
      cfg: the sweep configuration; ``binder``: binds structure groups to tasks.
      planned_trial_steps: what the sweep expects to train in all (sizes the measuring budget).
      recorded: what a checkpoint recorded of the run it resumes (``call_sizes``, ``forms``,
        ``per_call``): a resumed run plans and runs as the interrupted one did.
    """

    def __init__(
        self,
        cfg: SweepConfig,
        binder: Binder,
        *,
        planned_trial_steps: int,
        recorded: Mapping[str, Any] | None = None,
    ) -> None:
        base = cfg.base
        self.cfg, self.binder = cfg, binder
        self.mesh = make_mesh(base["parallel.devices"])
        steps, every = base["train.steps"], base["train.eval_every"]
        self.lengths = sorted({min(every, steps), (steps % every) or min(every, steps)})
        self.precision = base["train.precision"]
        self.planned = planned_trial_steps
        recorded = recorded or {}
        self.call_sizes: dict[str, list[int]] = {
            k: list(v) for k, v in recorded.get("call_sizes", {}).items()
        }
        self.forms: dict[str, str] = dict(recorded.get("forms", {}))
        self.per_call: int | None | str = recorded.get("per_call", "unsettled")
        self.call_choice = recorded.get("call_choice", "")
        #: Trials too large for the CPU cache rule (``auto`` tries them unrolled first).
        self.large_trials = bool(recorded.get("large_trials", False))
        self.measured_s = 0.0
        self.compile_s = 0.0  # seconds spent preparing populations (compiling, measuring)
        self._data: dict[int, Any] = {}
        self.populations = 0

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores so that a resumed run prepares the same populations."""
        return {
            "call_sizes": self.call_sizes,
            "forms": self.forms,
            "per_call": self.per_call,
            "call_choice": self.call_choice,
            "large_trials": self.large_trials,
        }

    # ------------------------------------------------------------------------------------------

    def population(
        self, trials: Sequence[tuple[int, dict[str, Any]]], *, fresh: bool = True
    ) -> Population:
        """Prepare the trials ``(sweep-wide id, overrides)``; ``fresh=False`` for a population
        whose states will be loaded (its init programs compile only if called)."""
        t0 = time.perf_counter()
        plan = group(self.cfg, self.binder, trials, splits=SPLITS)
        later = self.populations > 0
        if self.per_call == "unsettled":
            self.per_call, self.call_choice = self._settle(plan)
        plan = cut_calls(plan, self.per_call, self.mesh.size, pow2=later, compiled=self.call_sizes)
        calls, execution_info = [], []
        for g in range(len(plan.groups)):
            specs = [c for c in plan.calls if c.group == g]
            widest = max(specs, key=lambda c: c.size)
            form, info = self._form(plan, widest)
            execution_info.append(info)
            for spec in specs:
                call = self._call(plan, spec, self._form_of(plan, spec, form))
                call.program.compile_all(self.lengths, init=fresh)
                calls.append(call)
                self._remember(plan, call)
        self.populations += 1
        spent = time.perf_counter() - t0
        self.compile_s += spent
        return Population(
            plan,
            self.mesh,
            calls,
            execution=execution_info,
            per_call=self.per_call,
            call_choice=self.call_choice,
            compile_s=spent,
            data=[self._placed(d).info() for d in plan.data],
        )

    def _remember(self, plan: Plan, call: Call) -> None:
        signature = plan.groups[call.spec.group].signature
        sizes = self.call_sizes.setdefault(signature, [])
        if call.spec.size not in sizes:
            sizes.append(call.spec.size)
        self.forms[f"{signature}@{call.spec.size}"] = str(call.program.form)

    def _placed(self, splits: Any) -> Placed:
        """Where a dataset's splits live (decided once per dataset; see :func:`place`)."""
        if id(splits) not in self._data:
            self._data[id(splits)] = (splits, place(splits, self.cfg, self.mesh))
        return self._data[id(splits)][1]

    def _call(self, plan: Plan, spec: CallSpec, form: Form) -> Call:
        grp = plan.groups[spec.group]
        hp, keys, data_key = call_arrays(plan, spec)
        sharding = trial_sharding(self.mesh)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        hp, keys = parallel.put((hp, keys), sharding)
        data_key = parallel.put(data_key, replicated)
        splits = plan.data[grp.data_index]
        placed = self._placed(splits)
        feed, which, evals = None, None, {}
        if placed.train is not None:
            trials = [plan.trials[i] for i in spec.positions]
            trials += [trials[0]] * (spec.size - len(trials))
            first = plan.trials[grp.members[0]]
            feed = HostFeed(placed.train, grp.layout, trials, first, self.mesh)
            which = parallel.put(feed.which, sharding)
        for name, source in placed.evals.items():
            if name in grp.layout.splits:
                evals[name] = HostEval(source, grp.layout.eval_batch, self.mesh)
        program = CompiledCall(
            grp,
            spec.size,
            hp,
            keys,
            data_key,
            placed.device,
            num_examples(splits.train),
            self.mesh,
            form,
            self.precision,
            feed=feed,
            host_evals=evals,
        )
        return Call(spec, hp, keys, data_key, placed.device, program, which=which)

    # --- trials per call ----------------------------------------------------------------------

    def _settle(self, plan: Plan) -> tuple[int | None, str]:
        """The trials per call of every population of the sweep."""
        setting = self.cfg.base["train.max_trials_per_call"]
        if setting != "auto":
            return setting, f"fixed at {setting}"
        k = self.mesh.size
        g = max(range(len(plan.groups)), key=lambda i: len(plan.groups[i].members))
        members = plan.groups[g].members
        largest = len(members)
        probe = largest if largest <= DIRECT_TRIALS * k else PROBE_TRIALS * k
        spec = CallSpec(g, 0, members[:probe], math.ceil(probe / k) * k)
        call = self._call(plan, spec, self._initial_form(plan, spec))
        length = max(self.lengths)
        per_device = max(spec.size // k, 1)
        per_trial = call_memory_bytes(call.program.main(length)) / per_device
        working = per_trial
        if call.program.one_program(length) and call.program.form.defers_quarantine(per_device):
            # The deferred quarantine keeps the chunk's starting state until its end (read
            # once per chunk): not part of what each step touches.
            working -= state_bytes(call.program.state_shape) / spec.size
        fit = fit_memory(per_trial, largest, self.mesh, working=working)
        want, choice, self.large_trials = fit
        have = probe if largest > probe else None
        if have is not None and want is not None and have <= want <= 2 * have:
            # Within a factor of two of what fits, the probe's calls run about as fast
            # (benchmarks/sweep_throughput.py): keep them rather than compile again.
            return have, choice + f"; kept the compiled calls of {have}"
        return want, choice

    # --- execution forms ----------------------------------------------------------------------

    def _initial_form(self, plan: Plan, spec: CallSpec) -> Form:
        """The form of a call before anything is measured (recorded, fixed, or the prior)."""
        setting = self.cfg.base["train.execution"]
        if setting != "auto":
            return parse_form(setting)
        recorded = self.forms.get(f"{plan.groups[spec.group].signature}@{spec.size}")
        if recorded is not None:
            return parse_form(recorded)
        return self._candidates(plan, spec)[0]

    def _form_of(self, plan: Plan, spec: CallSpec, widest: Form) -> Form:
        """A call's form: the recorded one of its size, else its group's."""
        recorded = self.forms.get(f"{plan.groups[spec.group].signature}@{spec.size}")
        if self.cfg.base["train.execution"] == "auto" and recorded is not None:
            return parse_form(recorded)
        return widest

    def _candidates(self, plan: Plan, spec: CallSpec) -> list[Form]:
        grp = plan.groups[spec.group]
        fns = grp.binding.step
        hp, keys, _ = call_arrays(plan, spec)
        h0 = {k: jnp.asarray(v[0]) for k, v in hp.items()}
        source = as_source(plan.data[grp.data_index].train)
        x, y = source.gather(np.arange(min(2, len(source))))

        def one_step(key):
            state = fns.init(key, h0)
            return fns.train_step(state, h0, (x, y), 0)

        conv = form_choice.has_convolution(one_step, keys[0])
        per_device = spec.size // self.mesh.size
        return form_choice.candidates(
            jax.default_backend(), conv, per_device, large=self.large_trials
        )

    def _form(self, plan: Plan, spec: CallSpec) -> tuple[Form, dict[str, Any]]:
        """The form of a group (decided on its widest call) and what decided it."""
        setting = self.cfg.base["train.execution"]
        if setting != "auto":
            return parse_form(setting), {"form": setting, "how": "train.execution"}
        recorded = self.forms.get(f"{plan.groups[spec.group].signature}@{spec.size}")
        if recorded is not None:
            return parse_form(recorded), {"form": recorded, "how": "recorded (resumed run)"}
        forms = self._candidates(plan, spec)
        first = self._call(plan, spec, forms[0])
        key = first.program.shape_key
        if key in _CHOSEN:
            chosen = _CHOSEN[key]
            return chosen.form, _info(chosen, "auto: chosen earlier in this process")
        if len(forms) == 1:
            return forms[0], {"form": str(forms[0]), "how": "auto: one candidate"}
        length = max(self.lengths)
        compile_s = first.program.compile_all(self.lengths)  # needed if the first one wins
        step_s = _trial_step_seconds(first, length)
        budget = min(MEASURE_FRACTION * self.planned * step_s, MEASURE_CAP_S) - self.measured_s
        chosen = form_choice.choose(
            forms,
            lambda f: self._measure(plan, spec, f),
            budget,
            work=lambda f: f.steps_per_call(length) * spec.size,
            rate_guess=1.0 / max(step_s, 1e-12),
            compile_guess=compile_s,
        )
        if not chosen.rates:
            return forms[0], {"form": str(forms[0]), "how": "auto: too short to measure"}
        self.measured_s += chosen.spent_s
        _CHOSEN[key] = chosen
        return chosen.form, _info(chosen, "auto: measured")

    def _measure(self, plan: Plan, spec: CallSpec, form: Form) -> tuple[float, float, float]:
        """``(trial-steps per second, seconds timing, seconds compiling)`` of a form."""
        call = self._call(plan, spec, form)
        length = max(self.lengths)
        m = form.steps_per_call(length)
        t0 = time.perf_counter()
        p = call.program
        program = p.main(length)
        state = p.init()(call.hp, call.keys)
        if p.one_program(length):
            args = (call.hp, call.data, call.data_key, call.keys, np.int32(0))
        elif p.feed is None:
            batches = p.shuffle(length)(call.data_key, call.keys, call.hp, np.int32(0))
            args = (call.hp, call.data, batches, np.int32(0))
        else:
            batches = (p.feed.build(0, length), call.which, np.int32(0))
            args = (call.hp, call.data, batches, np.int32(0))
        compile_s = time.perf_counter() - t0
        t1 = time.perf_counter()

        def run(s):
            return program(s, *args)[0]

        rate = form_choice.time_calls(run, state, work=m * spec.size)
        return rate, time.perf_counter() - t1, compile_s


def _info(chosen: Measured, how: str) -> dict[str, Any]:
    return {
        "form": str(chosen.form),
        "how": how,
        "rates": dict(chosen.rates),
        "measure_s": chosen.spent_s,
    }


_PEAK: list[float] = []


def _peak_flops() -> float:
    """FLOP/s of a float32 matmul on the default device (measured once per process)."""
    if not _PEAK:
        a = jnp.ones((512, 512), jnp.float32)
        f = jax.jit(lambda a: a @ a).lower(a).compile()
        f(a).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(5):
            out = f(a)
        out.block_until_ready()
        _PEAK.append(5 * 2 * 512**3 / max(time.perf_counter() - t0, 1e-9))
    return _PEAK[0]


def _trial_step_seconds(call: Call, chunk: int) -> float:
    """A lower bound on one trial-step's time: the step's FLOPs at the matmul peak."""
    cost = call.program.lower_steps(1, chunk).cost_analysis() or {}
    flops = float(cost.get("flops", 0.0)) if isinstance(cost, dict) else 0.0
    return flops / max(call.spec.size, 1) / _peak_flops()
