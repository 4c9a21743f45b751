"""Every public aggregator, accumulator and error survives a pickle round trip.

Worker processes receive aggregators cloudpickled (users write lambdas and closures in
notebooks); catalog aggregators must also survive the plain pickle module.
"""

import inspect
import pickle
from collections import Counter

import cloudpickle
import pytest

import mergeagg
from mergeagg import Aggregator, product
from mergeagg.algorithms.registry import entries
from mergeagg.errors import (
    IncompatibleMergeError,
    InputError,
    NondeterminismError,
    TaskFailed,
    WorkerLost,
)

SHARDS = [["to be or not", "to be"], ["that is", "the question"], []]


def roundtrip(obj, dumps=pickle.dumps):
    return pickle.loads(dumps(obj))


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_wordcount_and_products_of_catalog_aggregators(dumps):
    for agg in (mergeagg.algorithms.wordcount(), mergeagg.algorithms.wordcount(lowercase=True),
                product(mergeagg.algorithms.wordcount(), mergeagg.algorithms.wordcount(True)),
                product(words=mergeagg.algorithms.wordcount())):
        copy = roundtrip(agg, dumps)
        assert type(copy) is Aggregator and copy.name == agg.name
        assert mergeagg.fingerprint(copy.reduce(SHARDS)) == mergeagg.fingerprint(
            agg.reduce(SHARDS))


def test_user_aggregators_with_lambdas_and_closures_need_cloudpickle():
    stop = {"the", "to"}
    agg = Aggregator(
        lambda lines: Counter(w for ln in lines for w in ln.split() if w not in stop),
        lambda a, b: a + b,
        lambda c: dict(c.most_common(3)),
    )
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(agg)
    copy = roundtrip(agg, cloudpickle.dumps)
    assert copy.reduce(SHARDS) == agg.reduce(SHARDS) == {"be": 2, "or": 1, "not": 1}
    both = product(n=Aggregator(len, lambda a, b: a + b), words=agg)
    assert roundtrip(both, cloudpickle.dumps).reduce(SHARDS) == both.reduce(SHARDS)


def test_accumulators_and_results_pickle():
    wc = mergeagg.algorithms.wordcount()
    acc = wc.partial(SHARDS[0])
    assert roundtrip(acc) == acc and type(roundtrip(acc)) is Counter
    result = mergeagg.run(wc, SHARDS, workers=0)
    copy = roundtrip(result)
    assert copy.value == result.value and copy.fingerprint == result.fingerprint
    assert copy.report.attempts == result.report.attempts


def test_errors_keep_their_details():
    tf = roundtrip(TaskFailed("boom", task="map-3", split="f:0-9", attempts=4, traceback="tb"))
    assert (str(tf), tf.task, tf.split, tf.attempts, tf.traceback) == (
        "boom", "map-3", "f:0-9", 4, "tb")
    nd = roundtrip(NondeterminismError("differs", task="map-1", fingerprints=["a", "b"]))
    assert (str(nd), nd.task, nd.fingerprints) == ("differs", "map-1", ("a", "b"))
    for exc in (InputError("bad byte"), IncompatibleMergeError("p=12 vs p=14"),
                WorkerLost("worker 2 died")):
        copy = roundtrip(exc)
        assert type(copy) is type(exc) and str(copy) == str(exc)


def _default_constructible(entry):
    """True when the entry's factory can be called without arguments."""
    try:
        sig = inspect.signature(entry.factory)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in sig.parameters.values())


ENTRIES = sorted(entries().items())


@pytest.mark.parametrize("name, entry", ENTRIES, ids=[name for name, _ in ENTRIES])
def test_every_catalog_entry_default_aggregator_pickles(name, entry):
    if not _default_constructible(entry):
        pytest.skip(f"the factory of {name} needs arguments")
    job = entry.factory()
    copy = roundtrip(job, cloudpickle.dumps)
    assert type(copy) is type(job)
    # Where the job accepts a small text shard, the copy must give the same answer.
    if isinstance(job, Aggregator):
        try:
            want = mergeagg.fingerprint(job.reduce([["1 2 3", "4"], ["5 a", "b"]]))
        except Exception:
            return
        assert mergeagg.fingerprint(copy.reduce([["1 2 3", "4"], ["5 a", "b"]])) == want
