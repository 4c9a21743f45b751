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
mergeagg.laws.LawViolation: combine is not commutative: ...
"""

from __future__ import annotations

import copy
import math
import pickle

from mergeagg.aggregator import Aggregator
from mergeagg.fingerprint import fingerprint

__all__ = ["check", "LawViolation", "records_strategy"]


class LawViolation(AssertionError):
    """An aggregator broke a law; the message shows the records, shards and both results."""


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
    """A hypothesis strategy of record lists sampled (with repeats) from ``records``."""
    from hypothesis import strategies as st

    records = list(records)
    if not records:
        raise ValueError("records_strategy needs at least one example record")
    return st.lists(st.sampled_from(records), min_size=1, max_size=max(8, 2 * len(records)))


def check(aggregator, records=None, *, strategy=None, max_examples=200, rel_tol=None,
          abs_tol=0.0, seed=0):
    """Search for a counterexample to the aggregator's laws; raise :class:`LawViolation`.

    Give ``records`` (a list of example records, sampled with repeats) or ``strategy`` (a
    hypothesis strategy of lists of records). ``rel_tol``/``abs_tol`` opt in to comparing
    floats approximately. ``seed`` makes the search reproducible. Cost: about
    ``max_examples`` × (three combines and a few partials).
    Returns ``None`` when no counterexample was found.
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st
    from hypothesis.errors import FlakyFailure

    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"check needs an Aggregator, got {type(aggregator).__name__}")
    if (records is None) == (strategy is None):
        raise TypeError("check takes exactly one of records= or strategy=")
    recs = records_strategy(records) if strategy is None else strategy
    approx = rel_tol is not None or abs_tol
    rel = rel_tol or 0.0
    agg = aggregator

    def same(x, y):
        if approx:
            return _close(x, y, rel, abs_tol)
        return fingerprint(x) == fingerprint(y)

    def fail(law, detail):
        raise LawViolation(f"{law}: {detail}")

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.generate, Phase.shrink])
    @hseed(seed)
    @given(data=st.data())
    def search(data):
        a_recs = data.draw(recs, label="records of shard a")
        b_recs = data.draw(recs, label="records of shard b")
        c_recs = data.draw(recs, label="records of shard c")
        pa, pb, pc = agg.partial(list(a_recs)), agg.partial(list(b_recs)), agg.partial(
            list(c_recs))

        b_before = fingerprint(pb)
        ab = agg.combine(_fresh(pa), pb)
        if fingerprint(pb) != b_before:
            fail("combine modified its second argument",
                 f"partial({_short(b_recs)}) changed when passed second to combine; "
                 "combine may only modify and return its first argument")
        ba = agg.combine(_fresh(pb), _fresh(pa))
        if not same(agg.finalize(_fresh(ab)), agg.finalize(_fresh(ba))):
            fail("combine is not commutative",
                 f"shards a={_short(a_recs)}, b={_short(b_recs)}: "
                 f"finalize(combine(a, b)) = {_short(agg.finalize(_fresh(ab)))} but "
                 f"finalize(combine(b, a)) = {_short(agg.finalize(_fresh(ba)))}")

        left = agg.combine(agg.combine(_fresh(pa), _fresh(pb)), _fresh(pc))
        right = agg.combine(_fresh(pa), agg.combine(_fresh(pb), _fresh(pc)))
        if not same(agg.finalize(left), agg.finalize(right)):
            fail("combine is not associative",
                 f"shards a={_short(a_recs)}, b={_short(b_recs)}, c={_short(c_recs)}: "
                 f"(a+b)+c gives {_short(agg.finalize(agg.combine(agg.combine(_fresh(pa), _fresh(pb)), _fresh(pc))))} "  # noqa: E501
                 f"but a+(b+c) gives {_short(agg.finalize(agg.combine(_fresh(pa), agg.combine(_fresh(pb), _fresh(pc)))))}")  # noqa: E501

        whole = list(a_recs) + list(b_recs) + list(c_recs)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=4),
                                label="cut points"))
        bounds = [0, *cuts, len(whole)]
        pieces = [whole[i:j] for i, j in zip(bounds, bounds[1:])]
        order = data.draw(st.permutations(range(len(pieces))), label="fold order")
        acc = agg.partial(pieces[order[0]])
        for k in order[1:]:
            acc = agg.combine(acc, agg.partial(pieces[k]))
        split_value = agg.finalize(acc)
        one_value = agg.finalize(agg.partial(whole))
        if not same(split_value, one_value):
            fail("the result depends on how the records are split",
                 f"records {_short(whole)} as one shard give {_short(one_value)}, but as "
                 f"shards {_short(pieces)} folded in order {list(order)} give "
                 f"{_short(split_value)}")

    try:
        search()
    except FlakyFailure as exc:
        raise LawViolation(
            "combine or partial is not deterministic: the same inputs gave different "
            f"results on a second try ({exc})"
        ) from None
