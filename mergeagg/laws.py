"""Law checks for your own aggregator: does ``combine`` really make a commutative monoid?

:func:`check` searches, with hypothesis, for counterexamples to the laws the runtime relies
on, and raises :class:`LawViolation` describing the smallest one it found:

* **commutativity** — ``combine(a, b)`` equals ``combine(b, a)``;
* **associativity** — ``combine(combine(a, b), c)`` equals ``combine(a, combine(b, c))``;
* **partition independence** — any split of the records into shards, folded in any order,
  gives what one partial over all the records gives (after ``finalize``);
* **ownership** — ``combine`` does not modify its second argument.

Equality is by :func:`mergeagg.fingerprint`, or within ``rel_tol``/``abs_tol`` for floats when
you opt in. Records come from a hypothesis strategy or from a list of example records that
hypothesis samples, reorders and cuts.

>>> from mergeagg import Aggregator
>>> total = Aggregator(sum, lambda a, b: a + b)
>>> check(total, records=[1, 2, 3, 10])
>>> minus = Aggregator(sum, lambda a, b: a - b)
>>> check(minus, records=[1, 2, 3])
Traceback (most recent call last):
...
mergeagg.laws.LawViolation: combine is not associative: ...
"""

from __future__ import annotations

import copy
import math
import pickle

from mergeagg.aggregator import Aggregator
from mergeagg.fingerprint import fingerprint

__all__ = ["check", "LawViolation", "records_strategy"]


class LawViolation(AssertionError):
    """An aggregator broke a law; the message shows the records, shards and both results.

    It is an ``AssertionError``, so a test that calls :func:`check` fails with the message.
    """


def _fresh(x):
    """An independent copy of an accumulator (pickle round trip; deepcopy as a fallback)."""
    try:
        return pickle.loads(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return copy.deepcopy(x)


def _short(x, limit=200):
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _close(x, y, rel_tol, abs_tol):
    if isinstance(x, float) or isinstance(y, float):
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            return False
        if math.isnan(x) and math.isnan(y):
            return True
        return math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k], rel_tol, abs_tol) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return (type(x) is type(y) and len(x) == len(y)
                and all(_close(a, b, rel_tol, abs_tol) for a, b in zip(x, y)))
    try:
        import numpy as np

        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            return x.shape == y.shape and bool(np.allclose(x, y, rtol=rel_tol, atol=abs_tol,
                                                           equal_nan=True))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return fingerprint(x) == fingerprint(y)


def records_strategy(records):
    """A hypothesis strategy of record lists sampled (with repeats) from ``records``.

    Lists hold 1 to ``max(8, 2 * len(records))`` records. Cost: O(len(records)) to build.

    >>> from hypothesis import find
    >>> find(records_strategy(["x", "y"]), lambda recs: "y" in recs)
    ['y']
    """
    from hypothesis import strategies as st

    records = list(records)
    if not records:
        raise ValueError("records_strategy needs at least one example record")
    return st.lists(st.sampled_from(records), min_size=1, max_size=max(8, 2 * len(records)))


def _require_hypothesis():
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise ImportError(
            "mergeagg.laws needs the hypothesis package: pip install hypothesis "
            "(it comes with mergeagg[dev])"
        ) from None


class _Calls:
    """Runs the user's three functions, turning what they raise into a LawViolation."""

    def __init__(self, agg, fail):
        self.agg, self.fail = agg, fail

    def partial(self, records):
        try:
            return self.agg.partial(list(records))
        except Exception as exc:
            hint = (" mergeagg hands partial an empty shard when a split holds no record (an "
                    "empty file, the tail of a long line): return the identity there"
                    if not records else "")
            self.fail("partial raised", f"partial({_short(records)}) raised "
                      f"{type(exc).__name__}: {exc}.{hint}")

    def combine(self, a, b, what):
        try:
            return self.agg.combine(a, b)
        except Exception as exc:
            self.fail("combine raised", f"combining {what} raised {type(exc).__name__}: {exc}")

    def finalize(self, acc, what):
        try:
            return self.agg.finalize(acc)
        except Exception as exc:
            self.fail("finalize raised", f"finalize of {what} raised {type(exc).__name__}: {exc}")


def check(aggregator, records=None, *, strategy=None, max_examples=200, rel_tol=None,
          abs_tol=0.0, seed=0):
    """Search for a counterexample to the aggregator's laws; raise :class:`LawViolation`.

    Give ``records`` (a list of example records, sampled with repeats) or ``strategy`` (a
    hypothesis strategy of lists of records). ``rel_tol``/``abs_tol`` opt in to comparing
    floats approximately. ``seed`` makes the search reproducible. Cost: about
    ``max_examples`` × (six combines, a few partials and their fingerprints), plus the
    shrinking of a counterexample when one is found.
    Returns ``None`` when no counterexample was found.

    The shards it tries may be empty (a real input split can be), so ``partial([])`` must
    work. Each message names the law, the shards (as record lists) and both results:

    >>> from mergeagg import Aggregator
    >>> mean_of_means = Aggregator(lambda xs: sum(xs) / max(len(xs), 1),
    ...                            lambda a, b: (a + b) / 2)
    >>> check(mean_of_means, records=[1, 2, 4])
    Traceback (most recent call last):
    ...
    mergeagg.laws.LawViolation: combine is not associative: ...
    """
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"check needs an Aggregator, got {type(aggregator).__name__}")
    if (records is None) == (strategy is None):
        raise TypeError("check takes exactly one of records= or strategy=")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive int, got {max_examples!r}")
    _require_hypothesis()
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st
    from hypothesis.errors import Flaky

    recs = records_strategy(records) if strategy is None else strategy
    approx = rel_tol is not None or bool(abs_tol)
    rel = rel_tol or 0.0

    def same(x, y):
        if approx:
            return _close(x, y, rel, abs_tol)
        return fingerprint(x) == fingerprint(y)

    def fail(law, detail):
        raise LawViolation(f"{law}: {detail}")

    calls = _Calls(aggregator, fail)

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
              phases=[Phase.generate, Phase.shrink])
    @hseed(seed)
    @given(data=st.data())
    def search(data):
        a_recs = list(data.draw(recs, label="records of shard a"))
        b_recs = list(data.draw(recs, label="records of shard b"))
        c_recs = list(data.draw(recs, label="records of shard c"))
        pa, pb, pc = calls.partial(a_recs), calls.partial(b_recs), calls.partial(c_recs)
        shown = f"shards a={_short(a_recs)}, b={_short(b_recs)}"
        shown3 = f"{shown}, c={_short(c_recs)}"

        def fin(acc, what):
            return calls.finalize(_fresh(acc), what)

        # Ownership: combine may modify and return its first argument, never its second.
        b_before, b_text = fingerprint(pb), _short(pb)
        ab = calls.combine(_fresh(pa), pb, "a and b")
        if fingerprint(pb) != b_before:
            fail("combine modified its second argument",
                 f"with {shown}, combine(a, b) changed b from {b_text} to "
                 f"{_short(pb)}; combine may only modify (and return) its first argument")
        ab_value = fin(ab, "combine(a, b)")
        calls.combine(ab, _fresh(pc), "combine(a, b) and c")
        if fingerprint(pb) != b_before:
            fail("combine returned an object that shares state with its second argument",
                 f"with {shown3}, combining combine(a, b) with c changed b; combine must "
                 "return its first argument or a new value, never b or a part of b")

        ba_value = fin(calls.combine(_fresh(pb), _fresh(pa), "b and a"), "combine(b, a)")
        if not same(ab_value, ba_value):
            fail("combine is not commutative",
                 f"{shown}: finalize(combine(a, b)) = {_short(ab_value)} but "
                 f"finalize(combine(b, a)) = {_short(ba_value)}. mergeagg combines partials "
                 "in whatever order the input was split, so the two must be equal")

        left = calls.combine(calls.combine(_fresh(pa), _fresh(pb), "a and b"), _fresh(pc),
                             "(a+b) and c")
        right = calls.combine(_fresh(pa), calls.combine(_fresh(pb), _fresh(pc), "b and c"),
                              "a and (b+c)")
        left_value, right_value = fin(left, "(a+b)+c"), fin(right, "a+(b+c)")
        if not same(left_value, right_value):
            fail("combine is not associative",
                 f"{shown3}: combine(combine(a, b), c) gives {_short(left_value)} but "
                 f"combine(a, combine(b, c)) gives {_short(right_value)}. mergeagg folds "
                 "partials along a tree whose shape depends on the number of splits, so "
                 "the two must be equal")

        whole = a_recs + b_recs + c_recs
        cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=4),
                                label="cut points"))
        bounds = [0, *cuts, len(whole)]
        pieces = [whole[i:j] for i, j in zip(bounds, bounds[1:])]
        order = data.draw(st.permutations(range(len(pieces))), label="fold order")
        acc = calls.partial(pieces[order[0]])
        for k in order[1:]:
            acc = calls.combine(acc, calls.partial(pieces[k]), f"the partial of {pieces[k]}")
        split_value = fin(acc, "the folded shards")
        one_value = fin(calls.partial(whole), "one partial of all the records")
        if not same(split_value, one_value):
            fail("the result depends on how the records are split",
                 f"records {_short(whole)} as one shard give {_short(one_value)}, but as "
                 f"shards {_short(pieces)} folded in order {list(order)} give "
                 f"{_short(split_value)}")

    try:
        search()
    except Flaky as exc:
        raise LawViolation(
            "partial or combine is not deterministic: the same shards gave different results "
            f"when tried again, so no fingerprint could prove a result ({exc})"
        ) from None
