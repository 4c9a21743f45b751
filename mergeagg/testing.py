"""A test kit for your own aggregators: hypothesis strategies and assertions.

Three assertions, from the cheapest to the most thorough, each raising
:class:`~mergeagg.laws.LawViolation` (an ``AssertionError``) with a message that names the
law, the records, the shards and both results:

* :func:`assert_laws` — ``combine`` is commutative and associative, leaves its second
  argument alone, and ``partial`` is deterministic;
* :func:`assert_partition_independent` — any cut of the records into shards, folded along
  any tree, gives what one partial over all of them gives;
* :func:`assert_failure_invariant` — the job run under fault plans (kills, hangs, delays,
  raises, corruption) gives the clean run's fingerprint; by default on workers simulated in
  this process on a virtual clock (a hundred plans take about a second), with
  ``executor="local"`` on real worker processes with real kills.

Strategies to draw your own cases: :func:`records`, :func:`split_layouts`,
:func:`tree_shapes`, :func:`fault_plans`.

Equality is by :func:`mergeagg.fingerprint` unless you say otherwise. Two results that
differ only by float rounding (a Welford variance combined in another order) are reported
as such, with the ``tolerance`` (a ``rel_tol``) to pass. An approximate aggregator states
its error bound with a :class:`Bound`: its laws then hold "within the stated bound".

>>> from collections import Counter
>>> from mergeagg import Aggregator
>>> wc = Aggregator(lambda lines: Counter(w for l in lines for w in l.split()),
...                 lambda a, b: a + b)
>>> assert_laws(wc, ["a b", "b c", "a"])
>>> assert_partition_independent(wc, ["a b", "b c", "a", "c c"])
>>> assert_failure_invariant(wc, [["a b"], ["b c"], ["a"], ["c c"]])
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import pickle
import random
import struct
from dataclasses import dataclass

from mergeagg.aggregator import Aggregator
from mergeagg.fingerprint import fingerprint
from mergeagg.laws import LawViolation, records_strategy

__all__ = [
    "records",
    "split_layouts",
    "tree_shapes",
    "fault_plans",
    "TreeShape",
    "Bound",
    "hyperloglog_bound",
    "countmin_bound",
    "heavyhitters_bound",
    "assert_laws",
    "assert_partition_independent",
    "assert_failure_invariant",
    "compare",
    "ulps",
    "use_runtime",
    "LawViolation",
    "FAULT_KINDS",
]

FAULT_KINDS = ("kill", "hang", "delay", "raise", "corrupt")

# What assert_failure_invariant runs on when the caller does not say: "inprocess", or a
# Session (the pytest plugin's marker sets it for one test).
_DEFAULT_RUNTIME = contextvars.ContextVar("mergeagg_testing_runtime", default="inprocess")


# -- strategies ------------------------------------------------------------------------------

def records(examples, *, min_size=1, max_size=None):
    """A hypothesis strategy of record lists sampled (with repeats) from ``examples``.

    The same as :func:`mergeagg.laws.records_strategy`, with the list sizes yours to set
    (``max_size`` defaults to ``max(8, 2 * len(examples))``). Cost: O(len(examples)).

    >>> from hypothesis import find
    >>> find(records(["x", "y"], min_size=2), lambda recs: "y" in recs)
    ['x', 'y']
    """
    from hypothesis import strategies as st

    examples = list(examples)
    if not examples:
        raise ValueError("records needs at least one example record")
    if max_size is None:
        max_size = max(8, 2 * len(examples), min_size)
    return st.lists(st.sampled_from(examples), min_size=min_size, max_size=max_size)


def split_layouts(records, *, max_shards=8, reorder=True):
    """A strategy of the ways to cut ``records`` into shards and order the shards.

    ``records`` is a list (every layout holds exactly those records) or a strategy of
    lists. A layout is a list of shards (lists of records, possibly empty: a real split
    can hold no record); records keep their order inside a shard. With ``reorder`` the
    shards come in any order, else in the records' order. Shrinks towards one shard.
    Cost: O(len(records)) per draw.

    >>> from hypothesis import find
    >>> sorted(find(split_layouts([1, 2, 3]), lambda shards: len(shards) == 3
    ...             and [] not in shards and shards[0] == [3]))
    [[1], [2], [3]]
    """
    from hypothesis import strategies as st

    if isinstance(max_shards, bool) or not isinstance(max_shards, int) or max_shards < 1:
        raise ValueError(f"max_shards must be a positive int, got {max_shards!r}")
    base = st.just(list(records)) if isinstance(records, (list, tuple)) else records

    @st.composite
    def layout(draw, recs):
        recs = list(recs)
        cuts = sorted(draw(st.lists(st.integers(0, len(recs)), max_size=max_shards - 1)))
        bounds = [0, *cuts, len(recs)]
        pieces = [recs[i:j] for i, j in zip(bounds, bounds[1:])]
        if reorder and len(pieces) > 1:
            order = draw(st.permutations(range(len(pieces))))
            pieces = [pieces[k] for k in order]
        return pieces

    return base.flatmap(lambda recs: layout(recs))


@dataclass(frozen=True)
class TreeShape:
    """The shape of a combine tree over the partials, in leaf order.

    ``kind`` is ``"fixed"`` (the runtime's tree: runs of ``fan_in`` children, folded left
    to right), ``"left"`` (``((p0+p1)+p2)+...``), ``"right"`` (``p0+(p1+(p2+...))``) or
    ``"random"`` (a random binary tree drawn from ``seed``). Cost: ``n - 1`` combines.

    >>> show = lambda a, b: f"({a}+{b})"
    >>> TreeShape("fixed", fan_in=2).fold([1, 2, 3], show)
    '((1+2)+3)'
    >>> TreeShape("right").fold([1, 2, 3], show)
    '(1+(2+3))'
    """

    kind: str = "fixed"
    fan_in: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("fixed", "left", "right", "random"):
            raise ValueError(f"TreeShape kind must be fixed, left, right or random, got "
                             f"{self.kind!r}")
        if isinstance(self.fan_in, bool) or not isinstance(self.fan_in, int) \
                or self.fan_in < 2:
            raise ValueError(f"TreeShape fan_in must be an int >= 2, got {self.fan_in!r}")

    def fold(self, values, combine):
        """Fold ``values`` (at least one) along this tree with ``combine``."""
        values = list(values)
        if not values:
            raise ValueError("a tree needs at least one value to fold")
        if self.kind == "fixed":
            from mergeagg.runtime.tree import fold_fixed

            return fold_fixed(values, combine, self.fan_in)
        if self.kind == "left":
            acc = values[0]
            for v in values[1:]:
                acc = combine(acc, v)
            return acc
        if self.kind == "right":
            acc = values[-1]
            for v in reversed(values[:-1]):
                acc = combine(v, acc)
            return acc
        rng = random.Random(self.seed)
        while len(values) > 1:  # join two neighbours at random: any binary tree
            i = rng.randrange(len(values) - 1)
            values[i:i + 2] = [combine(values[i], values[i + 1])]
        return values[0]

    def __str__(self):
        if self.kind == "fixed":
            return f"the runtime's tree with fan-in {self.fan_in}"
        if self.kind == "random":
            return f"a random binary tree (seed {self.seed})"
        return f"a {self.kind} fold"


def tree_shapes(*, max_fan_in=8, kinds=("fixed", "left", "right", "random")):
    """A strategy of :class:`TreeShape` (the runtime's fixed tree with fan-in 2 to
    ``max_fan_in``, left and right folds, random binary trees). Shrinks towards the fixed
    tree with fan-in 2. Cost: O(1) per draw.

    >>> from hypothesis import find
    >>> find(tree_shapes(), lambda t: t.kind == "random")
    TreeShape(kind='random', fan_in=2, seed=0)
    """
    from hypothesis import strategies as st

    return st.builds(TreeShape, kind=st.sampled_from(list(kinds)),
                     fan_in=st.integers(2, max(2, max_fan_in)),
                     seed=st.integers(0, 2**16))


def _task_ids(tasks, splits, fan_in, partitions):
    from mergeagg.runtime.tree import level_sizes

    ids = {"map": [f"map-{i}" for i in range(splits)], "combine": [], "reduce": []}
    sizes = level_sizes(splits, fan_in)
    for level in range(1, len(sizes)):
        below = sizes[level - 1]
        ids["combine"] += [f"combine-{level}-{j}" for j in range(sizes[level])
                           if min(fan_in, below - j * fan_in) > 1]
    ids["reduce"] = [f"reduce-{p}" for p in range(partitions)]
    out = []
    for t in tasks:
        if t in ids:
            out += [(t, i) for i in ids[t]]
        else:
            out.append((t.split("-", 1)[0], t))
    return out


def fault_plans(kinds=FAULT_KINDS, tasks=("map", "combine"), *, splits=8, fan_in=8,
                partitions=8, max_faults=3, attempts=2):
    """A strategy of exact :class:`~mergeagg.runtime.faults.FaultPlan` s: up to
    ``max_faults`` faults of ``kinds``, each on one attempt (1 to ``attempts``) of one task.

    ``tasks`` holds task kinds (``"map"``, ``"combine"``, ``"reduce"``), whose ids are
    those of a job with ``splits`` splits, ``fan_in`` and ``partitions`` (a keyed job's
    reducers), or exact task ids (``"map-3"``). A ``corrupt`` fault strikes map tasks
    only: the runtime audits maps (``verify``) and checks spill files, it cannot tell a
    corrupted combine from a correct one. Shrinks towards no fault. Cost: O(max_faults).

    >>> from hypothesis import find
    >>> plan = find(fault_plans(kinds=("kill",)), lambda p: len(p.only) == 2)
    >>> sorted(plan.only), plan.only["map-0"]
    (['map-0', 'map-1'], {1: Fault(kind='kill', at=0.0, factor=10.0)})
    """
    from hypothesis import strategies as st

    from mergeagg.runtime.faults import Fault, FaultPlan

    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in FAULT_KINDS]
    if bad or not kinds:
        raise ValueError(f"fault kinds must be among {', '.join(FAULT_KINDS)}, got "
                         f"{list(kinds)!r}")
    if isinstance(tasks, str):
        tasks = (tasks,)
    targets = _task_ids(tasks, splits, fan_in, partitions)
    if not targets:
        raise ValueError(f"no task to strike among {list(tasks)!r}")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be a positive int, got {attempts!r}")

    @st.composite
    def one(draw):
        stage, task = draw(st.sampled_from(targets))
        usable = [k for k in kinds if k != "corrupt" or stage == "map"] or ["delay"]
        kind = draw(st.sampled_from(usable))
        at = draw(st.sampled_from([0.0, 0.5, 0.9]))
        factor = draw(st.sampled_from([10.0, 2.0, 100.0]))
        return task, draw(st.integers(1, attempts)), Fault(kind, at=at, factor=factor)

    def plan(faults):
        only = {}
        for task, attempt, fault in faults:
            only.setdefault(task, {})[attempt] = fault
        return FaultPlan(only=only)

    return st.lists(one(), max_size=max_faults).map(plan)


# -- comparing results -----------------------------------------------------------------------

def ulps(x, y):
    """How many representable doubles lie between ``x`` and ``y`` (0 when equal).

    Cost: O(1).

    >>> ulps(5.333333333333333, 5.333333333333334), ulps(1.0, 1.0), ulps(-0.0, 0.0)
    (1, 0, 0)
    """
    def key(v):
        i = struct.unpack("<q", struct.pack("<d", float(v)))[0]
        return i if i >= 0 else -(i & 0x7FFFFFFFFFFFFFFF)

    return abs(key(x) - key(y))


class _Differ(Exception):
    def __init__(self, path):
        self.path = path


def _float_pairs(x, y, path, out):
    """Collect the float leaves that differ between ``x`` and ``y``; raise _Differ at the
    first difference that is not between two floats."""
    np = _numpy()
    if isinstance(x, float) and isinstance(y, float) or (
            np is not None and isinstance(x, np.floating) and isinstance(y, np.floating)):
        if not (x == y or (math.isnan(x) and math.isnan(y))):
            out.append((path, float(x), float(y)))
        return
    if isinstance(x, dict) and isinstance(y, dict) and type(x) is type(y):
        if x.keys() != y.keys():
            raise _Differ(path)
        for k in x:
            _float_pairs(x[k], y[k], f"{path}[{k!r}]", out)
        return
    if isinstance(x, (list, tuple)) and type(x) is type(y):
        if len(x) != len(y):
            raise _Differ(path)
        for i, (a, b) in enumerate(zip(x, y)):
            _float_pairs(a, b, f"{path}[{i}]", out)
        return
    if np is not None and isinstance(x, np.ndarray) and isinstance(y, np.ndarray) \
            and x.dtype == y.dtype and x.shape == y.shape and x.dtype.kind == "f":
        where = np.argwhere(~((x == y) | (np.isnan(x) & np.isnan(y))))
        for idx in where[:100]:
            i = tuple(int(v) for v in idx)
            out.append((f"{path}[{', '.join(map(str, i))}]", float(x[i]), float(y[i])))
        return
    names = _attributes(x) if type(x) is type(y) and not callable(x) else None
    if names:
        for name in names:
            _float_pairs(getattr(x, name, None), getattr(y, name, None), f"{path}.{name}",
                         out)
        return
    if fingerprint(x) != fingerprint(y):
        raise _Differ(path)


def _attributes(x):
    """The attribute names of a plain object (its ``__dict__``, or the ``__slots__`` of its
    classes, as a slotted dataclass has), or ``None`` for anything else."""
    if hasattr(x, "__dict__"):
        return sorted(vars(x))
    slots = []
    for cls in type(x).__mro__:
        own = getattr(cls, "__slots__", ())
        slots += [own] if isinstance(own, str) else [n for n in own if n != "__weakref__"]
    return slots or None


def _numpy():
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency
        return None
    return numpy


def _relative(a, b):
    """``|a - b|`` relative to the larger magnitude (inf when one is NaN or infinite)."""
    scale = max(abs(a), abs(b))
    if math.isnan(a) or math.isnan(b) or math.isinf(scale):
        return math.inf
    return abs(a - b) / scale if scale else 0.0


def _suggest(rel):
    """A round rel_tol a thousand times above the rounding seen (1e-12 for one ulp)."""
    return 10.0 ** math.ceil(math.log10(max(rel, 1e-300) * 1000))


ROUNDING_ULPS = 1 << 16  # below this many ulps apart, a difference is taken for rounding


def compare(x, y, tolerance=None, abs_tol=0.0):
    """``None`` when results ``x`` and ``y`` are the same, else why they are not.

    ``tolerance=None`` compares fingerprints; a difference made only of floats a few ulps
    apart is reported as rounding, with the ``rel_tol`` to pass. A number is a ``rel_tol``
    for every float inside (with ``abs_tol``); other leaves must be equal. Cost: one
    fingerprint of each, or one walk over both.

    >>> compare({"n": 3, "var": 5.333333333333333}, {"n": 3, "var": 5.333333333333334})
    "differ only by float rounding: at most 1 ulp apart (relative 1.7e-16, at ['var']); ..."
    >>> compare([1.0, 2.0], [1.0, 2.0 + 1e-15], tolerance=1e-12) is None
    True
    >>> compare([1, 2], [1, 3])
    'differ at [1]'
    """
    if tolerance is None and not abs_tol:
        if fingerprint(x) == fingerprint(y):
            return None
        pairs = []
        try:
            _float_pairs(x, y, "", pairs)
        except _Differ as exc:
            return f"differ at {exc.path or 'the top level'}"
        if not pairs:
            return "differ (their fingerprints differ, but no float inside does)"
        worst = max(pairs, key=lambda p: ulps(p[1], p[2]))
        n_ulps = ulps(worst[1], worst[2])
        rel = max(_relative(a, b) for _, a, b in pairs)
        if n_ulps <= ROUNDING_ULPS and rel > 1e-6:  # next to zero: an absolute tolerance
            gap = max(abs(a - b) for _, a, b in pairs)
            return (f"differ only by float rounding next to zero: at most {n_ulps} ulp "
                    f"apart (absolute {gap:.2g}, at {worst[0] or 'the top level'}). Pass "
                    f"abs_tol={_suggest(gap):g} if that is what you expect")
        if n_ulps <= ROUNDING_ULPS:
            return (f"differ only by float rounding: at most {n_ulps} ulp apart "
                    f"(relative {rel:.2g}, at {worst[0] or 'the top level'}); float "
                    f"addition is not associative, so a correct combine can do this. Pass "
                    f"tolerance={_suggest(rel):g} (a rel_tol) if that is what you expect")
        return (f"differ at {worst[0] or 'the top level'}: {worst[1]!r} against "
                f"{worst[2]!r} ({n_ulps} ulp apart, relative {rel:.2g}: more than "
                "rounding)")
    rel_tol = tolerance or 0.0
    pairs = []
    try:
        _float_pairs(x, y, "", pairs)
    except _Differ as exc:
        return f"differ at {exc.path or 'the top level'}"
    for path, a, b in pairs:
        if not math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol):
            return (f"differ at {path or 'the top level'}: {a!r} against {b!r}, beyond "
                    f"rel_tol={rel_tol:g}, abs_tol={abs_tol:g}")
    return None


# -- approximate aggregators ----------------------------------------------------------------

class Bound:
    """How an approximate aggregator states its error bound, so that a law holds "within
    the stated bound" rather than exactly.

    ``exact`` computes the true answer for a list of records (an exact
    :class:`~mergeagg.Aggregator`, or a function ``records -> answer``); ``within(value,
    truth)`` says whether the approximate result ``value`` (after ``finalize``) is within
    its stated bound of ``truth``: it returns ``True``, or ``False`` or a string saying
    what is off. The bound is read from the result itself (a sketch carries its own error:
    :attr:`HyperLogLog.standard_error`, :meth:`CountMin.error_bound`, the heavy hitters'
    ``max_error``), so the same ``Bound`` serves every parameter choice. The assertions
    then require every result, of every split layout and tree, to be within the bound of
    the truth: a biased merge drifts out of it as the shards multiply. A probabilistic
    bound (k standard errors) is checked as a hard one: the sketch is seeded, so the same
    records always give the same estimate; choose k so that the misses are rare enough
    for you. Cost: that of ``exact`` and ``within``.

    >>> from mergeagg import Aggregator
    >>> size = Bound(exact=lambda recs: len(set(recs)),
    ...              within=lambda est, truth: abs(est - truth) <= 0.1 * truth)
    >>> size.check(105, [*range(100)]), size.check(120, [*range(100)])
    (None, 'is outside its stated bound: 120 against the exact 100')
    """

    def __init__(self, exact, within, *, name=None):
        if not callable(within):
            raise TypeError(f"Bound within must be callable, got {type(within).__name__}")
        if not isinstance(exact, Aggregator) and not callable(exact):
            raise TypeError(f"Bound exact must be an Aggregator or a function of the "
                            f"records, got {type(exact).__name__}")
        self.exact, self.within, self.name = exact, within, name

    def truth(self, recs):
        """The exact answer for ``recs``."""
        if isinstance(self.exact, Aggregator):
            return self.exact.finalize(self.exact.partial(list(recs)))
        return self.exact(list(recs))

    def check(self, value, recs, truth=None):
        """``None`` when ``value`` is within its bound of the exact answer for ``recs``,
        else why not."""
        truth = self.truth(recs) if truth is None else truth
        verdict = self.within(value, truth)
        if verdict is True:
            return None
        if isinstance(verdict, str):
            return f"is outside its stated bound: {verdict}"
        return (f"is outside its stated bound: {_short(value)} against the exact "
                f"{_short(truth)}")

    def __repr__(self):
        return f"Bound({self.name or 'custom'})"


def hyperloglog_bound(sigmas=4.0):
    """The :class:`Bound` of a HyperLogLog result: its ``count()`` within ``sigmas``
    standard errors (``standard_error``, relative) of the number of distinct records.

    >>> from mergeagg.algorithms.hyperloglog import HyperLogLog
    >>> hyperloglog_bound().check(HyperLogLog(p=10).update(["a", "b"]), ["a", "b", "a"])
    """
    def within(hll, truth):
        est = hll.count()
        err = sigmas * hll.standard_error * max(truth, 1)
        return abs(est - truth) <= err or (
            f"count() is {est:.6g} for {truth} distinct records, off by more than "
            f"{sigmas:g} standard errors ({err:.3g})")

    return Bound(lambda recs: len(set(recs)), within, name=f"hyperloglog, {sigmas:g} sigma")


def countmin_bound(words=False):
    """The :class:`Bound` of a count-min result: every record's (or word's) ``query`` is
    at least its true count and exceeds it by at most ``error_bound()``.

    >>> from mergeagg.algorithms.countmin import CountMin
    >>> countmin_bound().check(CountMin(64, 3).update(["x", "y", "x"]), ["x", "y", "x"])
    """
    from collections import Counter

    def exact(recs):
        return Counter(w for r in recs for w in r.split()) if words else Counter(recs)

    def within(cm, truth):
        bound = cm.error_bound()
        if cm.total != sum(truth.values()):
            return f"its total is {cm.total}, the records weigh {sum(truth.values())}"
        for key, count in truth.items():
            q = cm.query(key)
            if not count <= q <= count + bound:
                return (f"query({key!r}) is {q}; the true count is {count} and the "
                        f"stated bound allows {count} to {count + bound:g}")
        return True

    return Bound(exact, within, name="count-min")


def heavyhitters_bound():
    """The :class:`Bound` of a heavy-hitters result: ``n`` is exact, ``max_error`` at most
    ``n / (k + 1)``, at most ``k`` items, and every item's reported ``(estimate, upper)``
    brackets its count (an unreported item counts at most ``max_error``).

    >>> from mergeagg.algorithms.heavyhitters import heavyhitters
    >>> heavyhitters_bound().check(heavyhitters(k=2).reduce([["a", "a", "b"]]),
    ...                            ["a", "a", "b"])
    """
    from collections import Counter

    def within(hh, truth):
        n = sum(truth.values())
        if hh.n != n:
            return f"n is {hh.n}, the stream has {n} items"
        if hh.max_error > n / (hh.k + 1):
            return f"max_error {hh.max_error} exceeds n / (k + 1) = {n / (hh.k + 1):g}"
        if len(hh.items) > hh.k:
            return f"{len(hh.items)} items reported, more than k = {hh.k} counters"
        reported = {item: (lo, hi) for item, lo, hi in hh.items}
        for item, count in truth.items():
            lo, hi = reported.get(item, (0, hh.max_error))
            if not lo <= count <= hi:
                return f"{item!r} occurs {count} times, reported as {lo} to {hi}"
        return True

    return Bound(Counter, within, name="heavy hitters")


# -- assertions ------------------------------------------------------------------------------

def _short(x, limit=200):
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fresh(x):
    try:
        return pickle.loads(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return copy.deepcopy(x)


def _settings(max_examples, seed):
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import seed as hseed

    n = settings.default.max_examples if max_examples is None else max_examples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"max_examples must be a positive int, got {max_examples!r}")

    def apply(test):
        test = settings(max_examples=n, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                        phases=[Phase.explicit, Phase.generate, Phase.shrink])(test)
        return hseed(seed)(test) if seed is not None else test

    return apply


def _run_search(test):
    from hypothesis.errors import Flaky

    try:
        test()
    except Flaky as exc:
        raise LawViolation(
            "partial or combine is not deterministic: the same shards gave different results "
            f"when tried again, so no fingerprint could prove a result ({exc})") from None


class _User:
    """The user's three functions, what they raise turned into a LawViolation."""

    def __init__(self, agg):
        self.agg = agg

    def partial(self, recs):
        try:
            return self.agg.partial(list(recs))
        except Exception as exc:
            hint = (" (mergeagg hands partial an empty shard when a split holds no record: "
                    "return the identity there)" if not recs else "")
            raise LawViolation(f"partial raised: partial({_short(recs)}) raised "
                               f"{type(exc).__name__}: {exc}{hint}") from exc

    def combine(self, a, b, what):
        try:
            return self.agg.combine(a, b)
        except Exception as exc:
            raise LawViolation(f"combine raised: combining {what} raised "
                               f"{type(exc).__name__}: {exc}") from exc

    def finalize(self, acc, what):
        try:
            return self.agg.finalize(_fresh(acc))
        except Exception as exc:
            raise LawViolation(f"finalize raised: finalize of {what} raised "
                               f"{type(exc).__name__}: {exc}") from exc


class _PerKey:
    """A :class:`~mergeagg.KeyedJob` seen as one aggregator over its tables ``{key: acc}``.

    ``partial`` is the map side's combined table of a shard (``job.map_table``);
    ``combine`` folds the second table into the first, key by key, with the job's
    ``combine`` (a key new to the first table takes a copy of the second's value, as a
    reducer reading a map output file does); ``finalize`` applies the job's ``finalize``
    to every key. So the laws of this aggregator are the job's per-key laws, and folding
    tables along any tree covers every order in which a shuffle into any number of
    reducers can fold a key's values. Cost: that of the job's functions, plus one copy per
    key new to the first table.
    """

    def __init__(self, job):
        self.job = job

    def partial(self, shard):
        return self.job.map_table(shard)

    def combine(self, a, b):
        combine = self.job.combine
        for key, value in b.items():
            a[key] = combine(a[key], value) if key in a else _fresh(value)
        return a

    def finalize(self, table):
        finalize = self.job.finalize
        return {key: finalize(acc) for key, acc in table.items()}


def _as_aggregator(agg, fn):
    """``agg`` itself, or a KeyedJob's per-key view (:class:`_PerKey`) with a label for
    the messages; ``TypeError`` for anything else."""
    from mergeagg.keyed import KeyedJob

    if isinstance(agg, Aggregator):
        return agg, None
    if isinstance(agg, KeyedJob):
        view = _PerKey(agg)
        return (Aggregator(view.partial, view.combine, view.finalize, name=agg.name),
                f"{agg!r}, checked per key (partial = the map side's table of a shard, "
                "combine = the job's combine on each key's values)")
    raise TypeError(f"{fn} needs an Aggregator or a KeyedJob, got {type(agg).__name__}")


@contextlib.contextmanager
def _labelled(label):
    """Prefix the LawViolation raised inside with ``label`` (what was checked)."""
    if label is None:
        yield
        return
    try:
        yield
    except LawViolation as exc:
        raise LawViolation(f"{label}: {exc}") from exc.__cause__


def _check_tolerance(tolerance):
    if tolerance is None or isinstance(tolerance, Bound):
        return
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
            or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be None, a rel_tol in [0, 1) or a Bound, got "
                         f"{tolerance!r}")


def _disjoint_shards(records):
    """A strategy of three shards that share no record: distinct records of ``records`` (a
    list: each used at most once, in any order) or one draw of ``records`` (a strategy),
    cut in three."""
    from hypothesis import strategies as st

    if isinstance(records, (list, tuple)):
        examples = list(records)
        if not examples:
            raise ValueError("assert_laws needs at least one example record")
        whole = st.lists(st.integers(0, len(examples) - 1), unique=True,
                         max_size=len(examples)).map(lambda idx: [examples[i] for i in idx])
    else:
        whole = records

    @st.composite
    def three(draw):
        recs = list(draw(whole))
        i, j = sorted(draw(st.lists(st.integers(0, len(recs)), min_size=2, max_size=2)))
        return recs[:i], recs[i:j], recs[j:]

    return three()


def assert_laws(agg, records, *, tolerance=None, abs_tol=0.0, max_examples=None, seed=0,
                distinct=False):
    """Search for a counterexample to the laws of ``combine``; raise
    :class:`~mergeagg.laws.LawViolation` naming the smallest one found.

    The laws: ``partial`` gives the same accumulator twice for the same records;
    ``combine`` does not modify its second argument (it may modify and return its first);
    it is commutative and associative (after ``finalize``). ``agg`` is an
    :class:`~mergeagg.Aggregator` or a :class:`~mergeagg.KeyedJob` (checked per key: a
    shard's partial is the map side's table ``{key: acc}``, and two tables combine key by
    key with the job's ``combine``). ``records`` is a list of
    example records (sampled with repeats into three shards) or a strategy of record
    lists. ``tolerance``: ``None`` (exact, by fingerprint), a ``rel_tol`` for floats, or a
    :class:`Bound` (each side within the bound of the truth). ``max_examples`` defaults to
    the current hypothesis profile's. ``distinct=True`` for records that may occur only
    once in a job (tasks naming their share of the work, such as matmul's, or rows with
    unique ids): the three shards are then disjoint, each record in at most one of them.
    Cost: about ``max_examples`` × (seven combines, four partials and their
    fingerprints), plus shrinking when a counterexample is found.

    >>> from mergeagg import Aggregator
    >>> assert_laws(Aggregator(sum, lambda a, b: a - b), [1, 2, 3])
    Traceback (most recent call last):
    ...
    mergeagg.laws.LawViolation: combine is not associative: ...
    """
    from hypothesis import given
    from hypothesis import strategies as st

    agg, label = _as_aggregator(agg, "assert_laws")
    _check_tolerance(tolerance)
    recs = records if not isinstance(records, (list, tuple)) else records_strategy(records)
    shards = _disjoint_shards(records) if distinct else None
    user = _User(agg)

    def differ(x, y, whole):
        if isinstance(tolerance, Bound):
            truth = tolerance.truth(whole)
            return tolerance.check(x, whole, truth) or tolerance.check(y, whole, truth)
        return compare(x, y, tolerance, abs_tol)

    @_settings(max_examples, seed)
    @given(data=st.data())
    def search(data):
        if shards is not None:
            a, b, c = data.draw(shards, label="disjoint records of shards a, b, c")
        else:
            a = list(data.draw(recs, label="records of shard a"))
            b = list(data.draw(recs, label="records of shard b"))
            c = list(data.draw(recs, label="records of shard c"))
        shown = f"shards a={_short(a)}, b={_short(b)}"
        shown3 = f"{shown}, c={_short(c)}"
        pa, pb, pc = user.partial(a), user.partial(b), user.partial(c)

        again = user.partial(a)
        if fingerprint(again) != fingerprint(pa):
            raise LawViolation(
                f"partial is not deterministic: partial({_short(a)}) gave {_short(pa)}, "
                f"then {_short(again)}. A retried or raced task must give the same bytes "
                "(no randomness, clock, process id or iteration order of a set of str)")

        b_before, b_text = fingerprint(pb), _short(pb)
        ab = user.combine(_fresh(pa), pb, "a and b")
        if fingerprint(pb) != b_before:
            raise LawViolation(
                f"combine modified its second argument: with {shown}, combine(a, b) changed "
                f"b from {b_text} to {_short(pb)}; combine may modify (and return) only its "
                "first argument")
        ab_value = user.finalize(ab, "combine(a, b)")
        user.combine(ab, _fresh(pc), "combine(a, b) and c")
        if fingerprint(pb) != b_before:
            raise LawViolation(
                f"combine returned an object that shares state with its second argument: "
                f"with {shown3}, combining combine(a, b) with c changed b; return the first "
                "argument or a new value, never b or a part of b")

        ba_value = user.finalize(user.combine(_fresh(pb), _fresh(pa), "b and a"),
                                 "combine(b, a)")
        why = differ(ab_value, ba_value, a + b)
        if why:
            raise LawViolation(
                f"combine is not commutative: {shown}: finalize(combine(a, b)) = "
                f"{_short(ab_value)} and finalize(combine(b, a)) = {_short(ba_value)} {why}. "
                "mergeagg combines partials in whatever order the input was split")

        left = user.combine(user.combine(_fresh(pa), _fresh(pb), "a and b"), _fresh(pc),
                            "(a+b) and c")
        right = user.combine(_fresh(pa), user.combine(_fresh(pb), _fresh(pc), "b and c"),
                             "a and (b+c)")
        lv, rv = user.finalize(left, "(a+b)+c"), user.finalize(right, "a+(b+c)")
        why = differ(lv, rv, a + b + c)
        if why:
            raise LawViolation(
                f"combine is not associative: {shown3}: combine(combine(a, b), c) gives "
                f"{_short(lv)} and combine(a, combine(b, c)) gives {_short(rv)}: they {why}. "
                "mergeagg folds partials along a tree whose shape depends on the number of "
                "splits")

    with _labelled(label):
        _run_search(search)


def assert_partition_independent(agg, records, *, tolerance=None, abs_tol=0.0, layouts=None,
                                 trees=None, max_examples=None, seed=0, max_shards=8):
    """Check that any cut of ``records`` into shards, folded along any tree, gives what one
    partial over all of them gives; raise :class:`~mergeagg.laws.LawViolation` otherwise.

    ``agg`` is an :class:`~mergeagg.Aggregator` or a :class:`~mergeagg.KeyedJob` (its
    shards' tables ``{key: acc}`` folded key by key along the tree, against the job's
    answer for one shard: every order in which any number of reducers can fold a key's
    values). ``records`` is a list (every layout holds exactly those records) or a strategy of
    record lists. ``layouts`` and ``trees`` are strategies (default
    :func:`split_layouts` and :func:`tree_shapes`) or lists of layouts and
    :class:`TreeShape` to try each of (then no search runs: call it from your own
    ``@given`` test). ``tolerance``: ``None`` (exact), a ``rel_tol``, or a :class:`Bound`
    (every fold, and the one partial, within the bound of the truth). Cost: per example,
    one partial per shard plus one over all records, ``shards - 1`` combines, two
    finalizes and fingerprints.

    >>> from mergeagg import Aggregator
    >>> mean_of_means = Aggregator(lambda xs: sum(xs) / max(len(xs), 1),
    ...                            lambda a, b: (a + b) / 2)
    >>> assert_partition_independent(mean_of_means, [1, 2, 3, 4])
    Traceback (most recent call last):
    ...
    mergeagg.laws.LawViolation: the result depends on how the records are split: ...
    """
    from hypothesis import given
    from hypothesis import strategies as st

    agg, label = _as_aggregator(agg, "assert_partition_independent")
    _check_tolerance(tolerance)
    user = _User(agg)

    def one(layout, tree):
        whole = [r for shard in layout for r in shard]
        if not layout:
            return
        value = user.finalize(tree.fold([user.partial(s) for s in layout],
                                        lambda a, b: user.combine(a, b, "two partials")),
                              "the folded shards")
        ref = user.finalize(user.partial(whole), "one partial of all the records")
        if isinstance(tolerance, Bound):
            truth = tolerance.truth(whole)
            why = tolerance.check(ref, whole, truth)
            if why:
                raise LawViolation(f"one partial of all the records {_short(whole)} gives "
                                   f"{_short(ref)}, which {why}")
            why = tolerance.check(value, whole, truth)
            if why:
                raise LawViolation(
                    f"the result depends on how the records are split: shards "
                    f"{_short(layout)} folded along {tree} give {_short(value)}, which {why}")
            return
        why = compare(value, ref, tolerance, abs_tol)
        if why:
            raise LawViolation(
                f"the result depends on how the records are split: the records "
                f"{_short(whole)} as one shard give {_short(ref)}, but as shards "
                f"{_short(layout)} folded along {tree} give {_short(value)}: they {why}")

    if isinstance(layouts, (list, tuple)) and isinstance(trees, (list, tuple, type(None))):
        with _labelled(label):
            for layout in layouts:
                for tree in trees or [TreeShape()]:
                    one([list(s) for s in layout], tree)
        return
    lay = layouts if layouts is not None else split_layouts(records, max_shards=max_shards)
    if isinstance(lay, (list, tuple)):
        lay = st.sampled_from(list(lay))
    tr = trees if trees is not None else tree_shapes()
    if isinstance(tr, (list, tuple)):
        tr = st.sampled_from(list(tr))

    @_settings(max_examples, seed)
    @given(layout=lay, tree=tr)
    def search(layout, tree):
        one([list(s) for s in layout], tree)

    with _labelled(label):
        _run_search(search)


@contextlib.contextmanager
def use_runtime(runtime):
    """Make ``runtime`` (``"inprocess"``, ``"local"`` or a
    :class:`~mergeagg.Session` with worker processes) the default of
    :func:`assert_failure_invariant` inside the ``with`` block; the pytest plugin's
    ``mergeagg_processes`` marker does this for one test.

    >>> with use_runtime("inprocess"):
    ...     _DEFAULT_RUNTIME.get()
    'inprocess'
    """
    token = _DEFAULT_RUNTIME.set(runtime)
    try:
        yield runtime
    finally:
        _DEFAULT_RUNTIME.reset(token)


def _as_plan(plan):
    from mergeagg.runtime.faults import FaultPlan

    if isinstance(plan, FaultPlan) or plan is None:
        return plan
    if isinstance(plan, str):
        return FaultPlan.parse(plan)
    raise TypeError(f"a fault plan must be a FaultPlan or a spec string, got "
                    f"{type(plan).__name__}")


def _describe(plan):
    if plan is None:
        return "no fault"
    if plan.only:
        return ", ".join(f"{f.kind} at {task} attempt {n}" for task, by in sorted(
            plan.only.items()) for n, f in sorted(by.items())) or "no fault"
    rates = ",".join(f"{k}={v:g}" for k, v in plan.rates.items())
    return f"{rates},seed={plan.seed}"


def _corrupted(plan):
    if plan is None:
        return set()
    tasks = {t for t, by in plan.only.items() if any(f.kind == "corrupt" for f in by.values())}
    if plan.rates.get("corrupt"):
        tasks.add(None)  # any map may be corrupted
    return tasks


def _require_struck(plan, report, where):
    """A plan given by hand that kills or raises at a task's first attempt must show in
    the report, else the run proved nothing (a task id that the job does not have). A
    task whose first attempt lost a race to its backup before the fault struck (it ran
    twice, no failure) is no such mistake: real processes on a loaded machine do that."""
    if plan is None:
        return
    sure = {task for task, by in plan.only.items()
            if any(n == 1 and f.kind in ("kill", "raise") for n, f in by.items())}
    raced = {t.task for t in report.tasks if t.attempts > 1}
    missed = sorted(sure - {f.task for f in report.failures} - raced)
    if missed:
        raise LawViolation(
            f"{where} no failure was seen at {', '.join(missed)}: the fault never struck, so "
            "the run proved nothing (is that a task of this job? map-0.. per split, "
            "combine-<level>-<index>, reduce-<partition>)")


def assert_failure_invariant(agg, source, *, plans=None, executor=None, fan_in=8,
                             max_examples=None, seed=0, workers=2, verify=1.0,
                             heartbeat_timeout=None, **job_options):
    """Run the job under fault plans and check each run gives the clean run's fingerprint;
    raise :class:`~mergeagg.laws.LawViolation` otherwise.

    ``agg`` is an :class:`~mergeagg.Aggregator` or a :class:`~mergeagg.KeyedJob` (its
    ``partitions=`` and other options go in ``job_options``); ``source`` anything
    :func:`mergeagg.run` takes. The clean run is the serial reference in this process.
    ``plans``: a strategy of plans (default :func:`fault_plans` of kills, hangs, delays
    and raises, sized to the source and ``fan_in``, ``max_examples`` of them; no hangs on
    real processes, where each costs seconds; a
    ``corrupt`` fault tests the runtime's audit rather than your aggregator, ask for it
    with ``fault_plans(kinds=FAULT_KINDS)``), or a list of
    :class:`~mergeagg.runtime.faults.FaultPlan` or spec strings to run each of.

    ``executor``: ``"inprocess"`` (the default: ``workers`` simulated in this process on a
    virtual clock; kills and hangs cost no time), ``"local"`` (real worker processes, real
    SIGKILL and SIGSTOP; a pool started for this call), or a
    :class:`~mergeagg.Session` with worker processes (a warm pool: the plugin's
    ``mergeagg_runtime`` fixture). ``verify=1.0`` has every map re-run once on another
    worker, so a non-deterministic ``partial`` is caught under any plan; a ``corrupt``
    fault is then caught as the corruption it is (the run fails with
    :class:`~mergeagg.errors.NondeterminismError` naming the corrupted task, which counts
    as the runtime doing its job). Plans given in a list that kill or raise at a task's
    first attempt must strike: the report has to show that task's failure, so a plan
    naming a task the job does not have is an error, not a pass. Cost: one serial run,
    then one run per plan.

    >>> from mergeagg import Aggregator
    >>> total = Aggregator(sum, lambda a, b: a + b)
    >>> assert_failure_invariant(total, [[1, 2], [3], [4, 5]], plans=["kill=0.3,seed=1"])
    """
    from hypothesis import given

    from mergeagg.inputs import as_source
    from mergeagg.runtime.api import check_job, run_on
    from mergeagg.runtime.master import PolicyConfig

    check_job(agg, **{k: job_options.get(k) for k in ("partitions", "combiner",
                                                       "memory_limit", "output", "salt",
                                                       "output_format")})
    runtime = _DEFAULT_RUNTIME.get() if executor is None else executor
    keyed = not isinstance(agg, Aggregator)
    src = as_source(source)
    clean = run_on(agg, src, None, own=True, config=PolicyConfig(), fan_in=fan_in,
                   **job_options)
    hb = heartbeat_timeout if heartbeat_timeout is not None else (
        10.0 if runtime == "inprocess" else 1.0)
    knobs = dict(verify=verify, heartbeat_timeout=hb)

    pool = contextlib.ExitStack()
    if runtime == "local":
        from mergeagg.runtime.session import Session

        runtime = pool.enter_context(Session(workers=workers, heartbeat_interval=0.05,
                                             backup_min_seconds=0.0))
    elif runtime != "inprocess" and not hasattr(runtime, "run"):
        raise ValueError(f"executor must be 'inprocess', 'local' or a Session, got "
                         f"{runtime!r}")

    def run(plan):
        if runtime == "inprocess":
            from mergeagg.runtime.inprocess import InProcessExecutor

            return run_on(agg, src, InProcessExecutor(workers), own=True,
                          config=PolicyConfig(**knobs), fan_in=fan_in, faults=plan,
                          progress=False, **job_options)
        return runtime.run(agg, src, fan_in=fan_in, faults=plan, progress=False,
                           **job_options, **knobs)

    def one(plan):
        from mergeagg.errors import JobFailed, NondeterminismError

        plan = _as_plan(plan)
        where = f"under the fault plan ({_describe(plan)})"
        try:
            result = run(plan)
        except NondeterminismError as exc:
            hit = _corrupted(plan)
            if getattr(exc, "task", None) in hit or (None in hit and
                                                     str(exc.task).startswith("map-")):
                return  # the runtime caught the corruption injected there: its job
            raise LawViolation(
                f"partial or combine is not deterministic: {where}, the runtime ran a task "
                f"twice and got two different outputs: {exc}") from None
        except JobFailed as exc:
            note = ""
            if _corrupted(plan):
                note = (" (the plan corrupts a map output: when the corrupted value makes "
                        "combine raise, the combine's attempts can run out before the "
                        "runtime's audit of the map finds the corruption)")
            raise LawViolation(f"the job failed {where}{note}: {exc}") from None
        if result.fingerprint == clean.fingerprint:
            if check_struck:
                _require_struck(plan, result.report, where)
            return
        if keyed:
            shown = f"{len(result.value)} keys against {len(clean.value)}"
        else:
            why = compare(result.value, clean.value)
            shown = f"{_short(result.value)} against the clean {_short(clean.value)}: {why}"
        again = run_on(agg, src, None, own=True, config=PolicyConfig(), fan_in=fan_in,
                       **job_options)
        if again.fingerprint != clean.fingerprint:
            raise LawViolation(
                f"partial or combine is not deterministic: two clean serial runs gave "
                f"different fingerprints; {where} the result was {shown}")
        failures = "; ".join(f"{f.task}: {f.cause}" for f in result.report.failures)
        raise LawViolation(
            f"a failure changed the answer: {where} the job gave {shown}. Failures seen: "
            f"{failures or 'none'}. Retried tasks must give the same bytes: look for "
            "state kept between calls, or a combine that modifies its second argument")

    with pool:
        if plans is None:
            n = len(src)
            # On real processes a hang costs the session's 10 s settle after the job (a
            # cancelled attempt on a stopped worker never answers): kills, delays and
            # raises there; hangs in process, where they cost nothing.
            kinds = ("kill", "hang", "delay", "raise") if runtime == "inprocess" else (
                "kill", "delay", "raise")
            plans = fault_plans(kinds=kinds, splits=n, fan_in=fan_in,
                                partitions=job_options.get("partitions") or 8,
                                tasks=("map", "reduce") if keyed else ("map", "combine"))
        if isinstance(plans, (list, tuple)):
            check_struck = True
            for plan in plans:
                one(plan)
            return
        check_struck = False  # a drawn plan may strike a task or attempt the run never has

        @_settings(max_examples, seed)
        @given(plan=plans)
        def search(plan):
            one(plan)

        _run_search(search)
