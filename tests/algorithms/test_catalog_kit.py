"""Every catalog entry through the users' test kit (``mergeagg.testing``): its laws, any split
of its records folded along any tree, and any fault plan on the in-process executor.

This file is the one place every entry of the registry is exercised by the kit: a new entry
without a case here fails ``test_every_catalog_entry_has_a_kit_case``. The entries' own test
files keep what is particular to them (accuracy, references, errors, the command line).
Inputs are small and the searches short (half the hypothesis profile's examples), so the
whole file costs a few seconds on two cores under the CI profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pytest
from hypothesis import settings

import mergeagg as ma
from mergeagg import KeyedJob
from mergeagg.algorithms import registry
from mergeagg.algorithms.basic import count, maximum, mean, minimum, total, variance
from mergeagg.algorithms.bloom import bloom
from mergeagg.algorithms.countmin import countmin
from mergeagg.algorithms.dedup import dedup
from mergeagg.algorithms.heavyhitters import heavyhitters
from mergeagg.algorithms.hyperloglog import hyperloglog
from mergeagg.algorithms.invertedindex import invertedindex
from mergeagg.algorithms.join import join, join_source
from mergeagg.algorithms.kll import quantiles
from mergeagg.algorithms.linreg import fit, gradient, normal_equations
from mergeagg.algorithms.matmul import matmul, matmul_source
from mergeagg.algorithms.minhash import similarity, similarity_source
from mergeagg.algorithms.pagerank import pagerank
from mergeagg.algorithms.theta import theta
from mergeagg.algorithms.topk import topk
from mergeagg.algorithms.wordcount import wordcount
from mergeagg.testing import (
    Bound,
    assert_failure_invariant,
    assert_laws,
    assert_partition_independent,
    countmin_bound,
    heavyhitters_bound,
    hyperloglog_bound,
    split_layouts,
)


def examples():
    """Half the current hypothesis profile's examples (12 under CI, 25 locally), at least 5."""
    return max(5, settings.default.max_examples // 2)


# -- the records of each entry ----------------------------------------------------------------

NUMBERS = ["3", "-1", "2.5", "10", "0.1", "7", "-4.75", "1e3"]
INTS = ["3", "-1", "10", "7", "0", "12", "-5"]
LINES = ["to be or not", "to be", "that is the question", "be", "or not", "the end"]
KEYS = [f"user{i % 23}" for i in range(60)]
DOCS = [(i % 7, text) for i, text in enumerate(LINES * 2)]
ROWS = [[x, 0.5 * x - 2.0 + 0.01 * (x % 3)] for x in (0.5, 1.0, 2.0, 3.5, 4.0, 7.0, 9.5)]
ROWS2 = [[x, x * x % 5, 3.0 * x - x * x % 5 + 1.0] for x in (0.0, 1.0, 2.5, 3.0, 4.0, 6.0)]

LEFT = [{"k": k, "l": i} for i, k in enumerate([1, 2, 2, 3, None, 5])]
RIGHT = [{"k": k, "r": i} for i, k in enumerate([2, 3, 3, 4, None])]


def _records_of(src):
    """Every record of a Source, in split order: what the kit cuts its own ways."""
    return [r for sp in src.splits() for r in src.read(sp)]


def _join_records(strategy):
    return _records_of(join_source([LEFT[:3], LEFT[3:]], [RIGHT], strategy=strategy))


def _matmul_tasks():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((5, 6)), rng.standard_normal((6, 3))
    return _records_of(matmul_source(a, b, block=2, k_split=1))


def _similarity_records():
    return _records_of(similarity_source([list("abcdef"), list("defgh"), list("xyz")]))


# -- the bounds of the approximate entries ---------------------------------------------------

def _kll_within(sketch, values):
    """KLL: n, min and max exact; every decile's true rank within 2x the stated 99% rank
    error (a seeded sketch always gives the same answer, so the bound is checked hard)."""
    values = sorted(values)
    if sketch.n != len(values):
        return f"n is {sketch.n}, the stream has {len(values)} values"
    if not values:
        return True
    if (sketch.min, sketch.max) != (values[0], values[-1]):
        return f"min/max {sketch.min}/{sketch.max}, the stream's {values[0]}/{values[-1]}"
    err = 2 * sketch.rank_error()
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        x = sketch.quantile(q)
        lo = sum(v < x for v in values) / len(values)
        hi = sum(v <= x for v in values) / len(values)
        if not lo - err <= q <= hi + err:
            return f"quantile({q}) = {x} has true rank {lo:.3f}..{hi:.3f}, beyond {err:.3f}"
    return True


KLL_BOUND = Bound(lambda recs: [float(r) for r in recs], _kll_within, name="kll, 2x the "
                  "stated rank error")


# -- the cases ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One catalog entry (``entry``, the registry's name) as the kit sees it: ``make()`` gives
    the Aggregator or KeyedJob, ``records`` what the kit cuts into shards, ``tolerance`` what
    "the same" means (``None``: the same fingerprint), ``options`` the job's run options."""

    entry: str
    label: str
    make: object
    records: list
    tolerance: object = None
    options: dict = field(default_factory=dict)
    distinct: bool = False        # each record names unique work: disjoint shards in the laws
    laws_on: object = None        # the aggregator whose laws to check, when not make()'s
    empty_shards: bool = True     # False only for an entry that cannot take one yet (see below)

    def layouts(self):
        """The kit's split layouts, without empty shards where the entry cannot take them."""
        if self.empty_shards:
            return None
        return split_layouts(self.records).filter(lambda layout: all(layout))

    def __str__(self):
        return self.label


CASES = [
    Case("count", "count", count, NUMBERS),
    Case("sum", "sum-ints", total, INTS),
    Case("sum", "sum-floats", total, NUMBERS, tolerance=1e-12),
    Case("sum", "sum-exact", lambda: total(exact=True), NUMBERS),
    Case("min", "min", minimum, NUMBERS),
    Case("max", "max", maximum, NUMBERS),
    Case("mean", "mean", mean, NUMBERS, tolerance=1e-12),
    Case("mean", "mean-exact", lambda: mean(exact=True), NUMBERS),
    Case("variance", "variance", variance, NUMBERS, tolerance=1e-9),
    Case("bloom", "bloom", lambda: bloom(capacity=200, fpp=0.05), KEYS),
    Case("countmin", "countmin", lambda: countmin(width=61, depth=3), KEYS),
    Case("countmin", "countmin-words-bound", lambda: countmin(width=7, depth=2, words=True),
         LINES, tolerance=countmin_bound(words=True)),
    Case("dedup", "dedup", lambda: dedup(threshold=0.5, num_perm=32),
         [(f"d{i}", t) for i, t in enumerate(LINES + ["to be or not to be", "that is"])]),
    Case("heavyhitters", "heavyhitters", lambda: heavyhitters(k=3), KEYS[:30],
         tolerance=heavyhitters_bound()),
    Case("hyperloglog", "hyperloglog", lambda: hyperloglog(precision=6), KEYS),
    Case("hyperloglog", "hyperloglog-bound", lambda: hyperloglog(precision=6), KEYS,
         tolerance=hyperloglog_bound()),
    Case("invertedindex", "invertedindex-postings", invertedindex, DOCS),
    Case("invertedindex", "invertedindex-positions", lambda: invertedindex(mode="positions"),
         DOCS),
    Case("invertedindex", "invertedindex-keyed", lambda: invertedindex(mode="tf", keyed=True),
         DOCS, options={"partitions": 3}),
    Case("join", "join-reduce", lambda: join(on="k", how="full"), _join_records("reduce")),
    Case("join", "join-broadcast", lambda: join(on="k", how="left"),
         _join_records("broadcast")),
    Case("join", "join-keyed", lambda: join(on="k", how="full", keyed=True),
         _join_records("reduce"), options={"partitions": 3}),
    # The laws of the normal equations are those of their sums (a shard of one row has no
    # fit to compare); any split of all the rows is compared after the solve.
    Case("linreg", "linreg-normal", normal_equations, ROWS2, tolerance=1e-9,
         laws_on=lambda: _sums_only(normal_equations())),
    Case("linreg", "linreg-normal-exact", lambda: normal_equations(exact=True), ROWS,
         laws_on=lambda: _sums_only(normal_equations(exact=True))),
    Case("linreg", "linreg-gradient", lambda: gradient(np.array([0.3, -1.0])), ROWS,
         tolerance=1e-12, empty_shards=False),
    # A tile is finished only when all its K blocks are in: the laws hold on the block sums.
    Case("matmul", "matmul", matmul, _matmul_tasks(), distinct=True,
         laws_on=lambda: _sums_only(matmul())),
    Case("matmul", "matmul-keyed", lambda: matmul(keyed=True), _matmul_tasks(), distinct=True,
         laws_on=lambda: _sums_only(matmul(keyed=True)), options={"partitions": 2}),
    Case("minhash", "minhash-similarity", lambda: similarity(num_perm=16, exact=True),
         _similarity_records()),
    Case("quantiles", "quantiles", lambda: quantiles(k=8), NUMBERS * 4, tolerance=KLL_BOUND),
    Case("theta", "theta", lambda: theta(lg_k=5), [f"k{i % 70}" for i in range(90)]),
    Case("topk", "topk", lambda: topk(3), NUMBERS),
    Case("topk", "topk-count", lambda: topk(2, by="count", words=True), LINES),
    Case("wordcount", "wordcount", wordcount, LINES),
    Case("wordcount", "wordcount-keyed", lambda: wordcount(keyed=True, lowercase=True), LINES,
         options={"partitions": 3}),
]
# PageRank iterates: each iteration is a job of its own, checked by the kit in
# test_pagerank_runs_every_job_through_the_kit below.
ITERATIVE = {"pagerank"}


def test_every_catalog_entry_has_a_kit_case():
    covered = {case.entry for case in CASES} | ITERATIVE
    assert covered == set(registry.entries()), (
        f"catalog entries without a kit case: {sorted(set(registry.entries()) - covered)}; "
        f"cases of no entry: {sorted(covered - set(registry.entries()))}")


def test_the_keyed_entries_have_keyed_cases():
    keyed = {case.entry for case in CASES if isinstance(case.make(), KeyedJob)}
    assert keyed == {"invertedindex", "join", "matmul", "wordcount"}


def _sums_only(job):
    """``job`` without its finalize: the laws of its accumulators."""
    if isinstance(job, KeyedJob):
        return KeyedJob(job.map, job.combine, name=f"{job.name} sums")
    return ma.Aggregator(job.partial, job.combine, name=f"{job.name} sums")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_laws(case):
    agg = case.laws_on() if case.laws_on else case.make()
    assert_laws(agg, case.records, tolerance=case.tolerance, distinct=case.distinct,
                max_examples=examples())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_any_split_and_tree(case):
    assert_partition_independent(case.make(), case.records, tolerance=case.tolerance,
                                 layouts=case.layouts(), max_examples=examples())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_any_fault_plan(case):
    # Four shards (one of them empty: a split can hold no record), fan-in 2: two combine
    # levels for the faults to strike.
    recs = case.records
    q = len(recs) // 3
    shards = [recs[:q], [], recs[q:2 * q], recs[2 * q:]]
    if not case.empty_shards:
        shards.remove([])
    assert_failure_invariant(case.make(), shards, fan_in=2, max_examples=examples(),
                             **case.options)


# -- what the kit found -------------------------------------------------------------------------

def test_linreg_gradient_takes_an_empty_shard():
    rows = [[1.0, 3.0], [2.0, 5.0], [3.0, 7.0]]
    grad = gradient(np.array([0.3, -1.0]))
    assert_partition_independent(grad, rows, layouts=[[[], rows]], tolerance=1e-12)
    # An empty shard changes nothing: the same fit, bit for bit, as without it.
    assert fit([[], rows]).coef.tolist() == fit([rows]).coef.tolist()
    assert abs(fit([[], rows]).coef[0] - 2.0) < 1e-4


def test_pagerank_takes_a_split_without_edges():
    src = ma.shards([["# a comment only"], ["1 2", "2 3", "3 1", "3 4"]])
    with ma.Session(workers=0) as session:
        got = pagerank(src, mode="cached", session=session)
    assert len(got.ranks) == 4


# -- PageRank: every job of the iteration -----------------------------------------------------

def _side_stat_dropped(job):
    """The disk iteration's map also emits the bytes its maps read (a counter that grows with
    the number of maps, by design): the kit checks the contribution blocks without it."""
    def ranks_only(records):
        return {k: v for k, v in job.map(records).items() if not isinstance(k, str)}

    return KeyedJob(ranks_only, job.combine, job.finalize, name=job.name)


def _checked_runner(seen):
    """A ``run=`` for pagerank: every job it is given goes through the kit, then runs."""
    def run(job, src, **options):
        recs = _records_of(src)
        keyed = isinstance(job, KeyedJob)
        seen.append(type(job).__name__)
        # No empty shard: see test_pagerank_takes_a_split_without_edges.
        assert_partition_independent(_side_stat_dropped(job) if keyed else job, recs,
                                     tolerance=1e-12, max_examples=5,
                                     layouts=split_layouts(recs).filter(all))
        q = len(recs) // 2
        assert_failure_invariant(job, [recs[:q], recs[q:]], max_examples=5, **options)
        return ma.run(job, src, workers=0, **options)

    return run


def test_pagerank_runs_every_job_through_the_kit():
    g = nx.gnm_random_graph(12, 30, seed=3, directed=True)
    seen = []
    got = pagerank(g, mode="disk", run=_checked_runner(seen), max_iter=3, strict=False)
    assert seen == ["Aggregator"] + ["KeyedJob"] * 3
    plain = pagerank(g, mode="disk", max_iter=3, strict=False,
                     run=lambda job, src, **o: ma.run(job, src, workers=0, **o))
    assert got.vector.tobytes() == plain.vector.tobytes() and len(got.ranks) == 12
