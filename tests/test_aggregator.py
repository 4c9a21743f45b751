"""The Aggregator contract and product (several aggregators in one pass)."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg
from mergeagg import Aggregator, product
from mergeagg.aggregator import identity


def count():
    return Aggregator(len, lambda a, b: a + b, name="count")


def biggest():
    return Aggregator(lambda xs: max(xs, default=None),
                      lambda a, b: b if a is None else a if b is None else max(a, b))


def mean():
    return Aggregator(lambda xs: (sum(xs), len(xs)),
                      lambda a, b: (a[0] + b[0], a[1] + b[1]),
                      lambda acc: acc[0] / acc[1])


def test_constructor_checks_types():
    with pytest.raises(TypeError, match="Aggregator partial must be callable, got int"):
        Aggregator(1, max)
    with pytest.raises(TypeError, match="Aggregator combine must be callable, got str"):
        Aggregator(max, "max")
    with pytest.raises(TypeError, match="finalize must be callable or None, got list"):
        Aggregator(max, max, [])


def test_defaults_and_names():
    agg = Aggregator(max, max)
    assert agg.finalize is identity
    assert agg.name == "max" and repr(agg) == "Aggregator(max)"
    assert Aggregator(max, max, name="top").name == "top"
    assert Aggregator(lambda xs: 0, max).name == "<lambda>"


def test_reduce_folds_left_to_right_and_needs_a_shard():
    concat = Aggregator(list, lambda a, b: a + b)
    assert concat.reduce([[1], [2, 3], [], [4]]) == [1, 2, 3, 4]
    assert mean().reduce([[1, 2], [3, 6]]) == 3.0
    with pytest.raises(ValueError, match="reduce needs at least one shard"):
        concat.reduce([])


def test_product_tuple_and_mapping():
    shards = [[4, 1], [7], []]
    assert product(count(), biggest(), mean()).reduce(shards[:2]) == (3, 7, 4.0)
    assert product(n=count(), top=biggest()).reduce(shards) == {"n": 3, "top": 7}
    result = mergeagg.run(product(n=count(), mean=mean()), shards, workers=0, fan_in=2)
    assert result.value == {"n": 3, "mean": 4.0}
    assert result.fingerprint == mergeagg.fingerprint({"n": 3, "mean": 4.0})
    assert product(count()).name == "product(count)"


def test_product_argument_errors():
    with pytest.raises(TypeError, match="either all positional or all by name"):
        product(count(), n=count())
    with pytest.raises(TypeError, match="needs at least one aggregator"):
        product()
    with pytest.raises(TypeError, match="product: position 1 is a builtin_function"):
        product(count(), max)
    with pytest.raises(TypeError, match="product: top is a int, not an Aggregator"):
        product(n=count(), top=3)


def test_product_reads_a_one_shot_shard_once():
    seen = []

    def partial(xs):
        seen.append(list(xs))
        return len(seen[-1])

    agg = product(Aggregator(partial, lambda a, b: a + b), count())
    assert agg.partial(iter([1, 2, 3])) == (3, 3)
    assert seen == [[1, 2, 3]]


def test_product_keeps_ndarray_blocks_and_text_splits(tmp_path):
    arr = np.arange(12.0).reshape(6, 2)
    col_sum = Aggregator(lambda block: block.sum(axis=0), lambda a, b: a + b)
    rows = Aggregator(lambda block: block.shape[0], lambda a, b: a + b)
    result = mergeagg.run(product(col_sum, rows), mergeagg.array_rows(arr, rows=4), workers=0)
    np.testing.assert_array_equal(result.value[0], arr.sum(axis=0))
    assert result.value[1] == 6

    path = tmp_path / "t.txt"
    path.write_text("a b a\nb c\n" * 20)
    kinds = []
    spy = Aggregator(lambda shard: kinds.append(type(shard).__name__) or 0, lambda a, b: a + b)
    both = product(words=mergeagg.algorithms.wordcount(), spy=spy)
    out = mergeagg.run(both, str(path), workers=0, split_size=32)
    assert out.value["words"] == Counter({"a": 40, "b": 40, "c": 20})
    assert set(kinds) == {"TextShard"}  # the wordcount fast path (text()) is still there


def test_wordcount_handles_plain_lines_and_text_splits_alike(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("The cat\r\nthe\tdog  \n\nTHE end")
    lines = ["The cat", "the\tdog  ", "", "THE end"]
    wc = mergeagg.algorithms.wordcount()
    from_file = mergeagg.run(wc, str(path), workers=0, split_size=8).value
    assert from_file == wc.reduce([lines])
    assert from_file == Counter({"The": 1, "cat": 1, "the": 1, "dog": 1, "THE": 1, "end": 1})
    lower = mergeagg.algorithms.wordcount(lowercase=True)
    assert mergeagg.run(lower, str(path), workers=0).value["the"] == 3


@given(text=st.lists(st.sampled_from(list("aΣσςİi \n\t\r\u0345'.xX\u2028")), max_size=60)
       .map("".join), size=st.integers(1, 8))
def test_wordcount_over_pieces_of_whole_lines_counts_the_whole_text_s_words(text, size):
    import sys

    from mergeagg.inputs import TextShard

    wordcount = sys.modules["mergeagg.algorithms.wordcount"]
    shard = TextShard.__new__(TextShard)
    shard._text, shard._at, shard._it = text, None, None
    whole = {low: Counter((text.lower() if low else text).split()) for low in (False, True)}
    chunk = wordcount._CHUNK
    wordcount._CHUNK = size  # pieces of a few characters: many cuts, final sigmas at cuts
    try:
        for low in (False, True):
            assert wordcount.count_words(shard, low) == whole[low]
    finally:
        wordcount._CHUNK = chunk
    assert shard.consumed() == 1.0  # and it said how far it went
