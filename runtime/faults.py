"""Deterministic, seeded fault injection keyed by (task, attempt).

A :class:`FaultPlan` decides, for attempt ``n`` of task ``t``, whether something goes
wrong and what: the same plan and seed give the same faults on every run, whichever worker
runs what. Faults happen inside the worker process, around the user's function:

* ``kill``  — the worker process dies (SIGKILL) at a random point of the task;
* ``hang``  — the worker process stops (SIGSTOP): alive, silent, detected by heartbeats;
* ``delay`` — the task takes ``factor`` times as long (a sleep, not CPU): a straggler;
* ``raise`` — the user's function raises :class:`InjectedFault`;
* ``corrupt`` — the task's output is perturbed at random: a non-deterministic task, which
  backups and ``verify`` must catch.

Spec strings (the CLI's ``--faults``): ``"kill=0.1,delay=0.05x10,seed=3"``; rates are
probabilities per attempt; ``delay=P`` or ``delay=PxF`` (factor F, default 10);
``kinds=map`` limits faults to map tasks; ``attempts=1`` to first attempts; ``chaos`` is
the crash-test preset: about a third of attempts die and a third are delayed.

>>> plan = FaultPlan.parse("kill=0.5,seed=1")
>>> [plan.fault_for("map-3", n) for n in (1, 2)] == [plan.fault_for("map-3", n) for n in (1, 2)]
True
>>> FaultPlan.parse("chaos").rates["kill"]
0.33
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field

__all__ = ["FaultPlan", "Fault", "InjectedFault", "corrupt_value", "ProcessFaults"]

_KINDS = ("kill", "hang", "delay", "raise", "corrupt")


class InjectedFault(RuntimeError):
    """The exception a ``raise`` fault throws from inside a task."""


@dataclass(frozen=True)
class Fault:
    """One injected fault: its ``kind``, where in the task it strikes (``at`` in [0, 1)),
    and for delays the slow-down ``factor``."""

    kind: str
    at: float = 0.5
    factor: float = 10.0


@dataclass
class FaultPlan:
    """Rates per fault kind, a seed, and which tasks and attempts are eligible.

    ``only`` maps task ids to a fault to inject on a given attempt exactly
    (``{"map-2": {1: Fault("kill")}}``), for tests that want one precise failure.
    """

    rates: dict = field(default_factory=dict)
    seed: int = 0
    delay_factor: float = 10.0
    kinds: tuple = ("map", "combine")
    attempts: int | None = None
    only: dict = field(default_factory=dict)

    def __post_init__(self):
        for k, v in self.rates.items():
            if k not in _KINDS:
                raise ValueError(f"unknown fault kind {k!r}; known: {', '.join(_KINDS)}")
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"fault rate for {k} must be within [0, 1], got {v}")
        if sum(self.rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to more than 1: {self.rates}")

    @classmethod
    def parse(cls, spec):
        """A plan from a spec string (see the module docstring); ``None``/"" for none."""
        if spec is None or isinstance(spec, FaultPlan):
            return spec
        spec = spec.strip()
        if not spec or spec == "none":
            return None
        rates, seed, factor, kinds, attempts = {}, 0, 10.0, ("map", "combine"), None
        for part in spec.split(","):
            part = part.strip()
            if part == "chaos":
                rates.update(kill=0.33, delay=0.33)
                factor = 3.0
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"bad fault spec part {part!r}: expected name=value or chaos")
            try:
                if key == "seed":
                    seed = int(value)
                elif key == "kinds":
                    kinds = tuple(value.split("+"))
                elif key == "attempts":
                    attempts = int(value)
                elif key == "delay" and "x" in value:
                    p, f = value.split("x", 1)
                    rates["delay"] = float(p)
                    factor = float(f)
                elif key in _KINDS:
                    rates[key] = float(value)
                else:
                    raise ValueError(f"unknown fault {key!r}; known: {', '.join(_KINDS)}, "
                                     "seed, kinds, attempts, chaos")
            except ValueError as exc:
                raise ValueError(f"bad fault spec part {part!r}: {exc}") from None
        return cls(rates=rates, seed=seed, delay_factor=factor, kinds=kinds, attempts=attempts)

    def _uniforms(self, task, attempt):
        h = hashlib.blake2b(f"{self.seed}|{task}|{attempt}".encode(), digest_size=16).digest()
        a = int.from_bytes(h[:8], "little") / 2**64
        b = int.from_bytes(h[8:], "little") / 2**64
        return a, b

    def fault_for(self, task, attempt):
        """The fault for attempt ``attempt`` (1-based) of task ``task``, or ``None``."""
        special = self.only.get(task)
        if special is not None:
            return special.get(attempt)
        kind = task.split("-", 1)[0]
        if kind not in self.kinds:
            return None
        if self.attempts is not None and attempt > self.attempts:
            return None
        u, at = self._uniforms(task, attempt)
        acc = 0.0
        for name in _KINDS:
            acc += self.rates.get(name, 0.0)
            if u < acc:
                return Fault(name, at=at, factor=self.delay_factor)
        return None


def corrupt_value(value, salt):
    """A perturbed copy of ``value`` (what a non-deterministic task might return).

    >>> corrupt_value(3, 0.5) != 3
    True
    """
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 + int(salt * 1000)
    if isinstance(value, dict):
        out = type(value)(value) if not hasattr(value, "default_factory") else dict(value)
        out[f"__corrupt_{salt:.6f}"] = 1
        return out
    if isinstance(value, (set, frozenset)):
        return type(value)(set(value) | {f"__corrupt_{salt:.6f}"})
    if isinstance(value, list):
        return [*value, salt]
    if isinstance(value, tuple):
        return (*value, salt)
    return ("corrupt", salt, value)


class ProcessFaults:
    """How faults reach a worker that is an OS process (a local worker, a Dask worker):
    ``kill`` is a real SIGKILL of this process, ``hang`` a real SIGSTOP, ``delay`` a real
    sleep. The attempt runner (:mod:`mergeagg.runtime.attempt`) decides when they strike."""

    @staticmethod
    def kill_now():
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # pragma: no cover - the process is gone

    @staticmethod
    def kill_after(seconds):
        timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()

    @staticmethod
    def hang():
        os.kill(os.getpid(), signal.SIGSTOP)

    @staticmethod
    def sleep(seconds):
        time.sleep(seconds)

    @staticmethod
    def noise():
        return int.from_bytes(os.urandom(4), "little") / 2**32
