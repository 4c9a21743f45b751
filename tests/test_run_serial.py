"""``mergeagg.run(..., workers=0)`` and the fixed-shape tree it folds along."""

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg
from mergeagg import Aggregator
from mergeagg.errors import TaskFailed
from mergeagg.runtime import tree

records = st.lists(st.integers(-1000, 1000), max_size=60)
fan_ins = st.integers(2, 9)


@st.composite
def shardings(draw):
    recs = draw(records)
    cuts = sorted(draw(st.lists(st.integers(0, len(recs)), max_size=12)))
    bounds = [0, *cuts, len(recs)]
    return recs, [recs[i:j] for i, j in zip(bounds, bounds[1:])]


def total():
    return Aggregator(sum, lambda a, b: a + b)


def concatenation():
    # Associative but NOT commutative: only a fold that keeps split order gives the records
    # back in order, so this catches a tree that reorders its leaves.
    return Aggregator(list, lambda a, b: a + b)


def histogram():
    def add(a, b):
        a.update(b)
        return a
    return Aggregator(lambda xs: Counter(x % 7 for x in xs), add, lambda c: dict(c))


@given(shardings(), fan_ins)
def test_run_equals_a_plain_loop(sharded, fan_in):
    recs, shards = sharded
    loop_hist = {}
    for x in recs:
        loop_hist[x % 7] = loop_hist.get(x % 7, 0) + 1
    for agg, want in ((total(), sum(recs)), (concatenation(), recs), (histogram(), loop_hist)):
        result = mergeagg.run(agg, shards, workers=0, fan_in=fan_in)
        assert result.value == want
        assert result.fingerprint == mergeagg.fingerprint(want)
        assert result.report.attempts == [1] * len(shards)
        assert result.report.fan_in == fan_in


@given(shardings(), fan_ins, fan_ins)
def test_exact_combines_give_the_same_bytes_for_any_sharding_and_fan_in(sharded, f1, f2):
    recs, shards = sharded
    one = mergeagg.run(histogram(), [recs], workers=0, fan_in=f1)
    many = mergeagg.run(histogram(), shards, workers=0, fan_in=f2)
    assert one.fingerprint == many.fingerprint


def explicit_tree(leaves, combine, fan_in):
    """The tree built level by level from level_sizes/children, as documented."""
    sizes = tree.level_sizes(len(leaves), fan_in)
    level = list(leaves)
    for lv in range(1, len(sizes)):
        nxt = []
        for index in range(sizes[lv]):
            kids = tree.children(lv, index, len(leaves), fan_in)
            assert kids, (lv, index)
            acc = level[kids[0]]
            for k in kids[1:]:
                acc = combine(acc, level[k])
            nxt.append(acc)
            for k in kids:
                assert tree.parent(lv - 1, k, fan_in) == (lv, index)
        assert len(nxt) == sizes[lv]
        level = nxt
    (root,) = level
    return root


@given(st.integers(1, 200), fan_ins)
def test_fold_fixed_matches_the_level_by_level_tree(n, fan_in):
    leaves = [str(i) for i in range(n)]
    show = lambda a, b: f"({a}+{b})"
    assert tree.fold_fixed(iter(leaves), show, fan_in) == explicit_tree(leaves, show, fan_in)
    # Every leaf is used once, and the children of each level cover the level below.
    sizes = tree.level_sizes(n, fan_in)
    assert sizes[0] == n and sizes[-1] == 1
    for lv in range(1, len(sizes)):
        covered = [k for i in range(sizes[lv]) for k in tree.children(lv, i, n, fan_in)]
        assert covered == list(range(sizes[lv - 1]))


def test_fold_fixed_shape_examples():
    show = lambda a, b: f"({a}+{b})"
    assert tree.fold_fixed(["a"], show, 2) == "a"
    assert tree.fold_fixed("abcd", show, 2) == "((a+b)+(c+d))"
    assert tree.fold_fixed("abcde", show, 3) == "(((a+b)+c)+(d+e))"
    assert tree.level_sizes(1, 8) == [1]
    assert tree.level_sizes(64, 8) == [64, 8, 1]
    assert tree.level_sizes(65, 8) == [65, 9, 2, 1]


def test_fold_fixed_streams_holding_few_values():
    counts = {"yielded": 0, "combined": 0, "most": 0}

    def leaves():
        for i in range(1000):
            counts["yielded"] += 1
            yield [i]

    def combine(a, b):
        counts["combined"] += 1
        live = counts["yielded"] - counts["combined"]
        counts["most"] = max(counts["most"], live)
        a.extend(b)
        return a

    assert tree.fold_fixed(leaves(), combine, 4) == list(range(1000))
    assert counts["combined"] == 999
    # At most fan_in values per level are alive (5 levels for 1000 leaves at fan-in 4),
    # never all 1000 leaves.
    assert counts["most"] <= 4 * len(tree.level_sizes(1000, 4))


def test_tree_argument_errors():
    with pytest.raises(ValueError, match="at least one leaf"):
        tree.level_sizes(0, 2)
    with pytest.raises(ValueError, match="nothing to fold"):
        tree.fold_fixed([], lambda a, b: a, 2)
    with pytest.raises(ValueError, match="fan_in must be at least 2, got 1"):
        tree.check_fan_in(1)
    with pytest.raises(TypeError, match="fan_in must be an int, got str"):
        tree.check_fan_in("4")
    with pytest.raises(TypeError, match="fan_in must be an int, got bool"):
        tree.check_fan_in(True)


def test_the_runtime_respects_ownership():
    # combine may modify its first argument; the runtime must never use an accumulator
    # again after passing it as the second argument, nor pass one twice.
    consumed, keep = set(), []

    def partial(xs):
        acc = list(xs)
        keep.append(acc)
        return acc

    def combine(a, b):
        assert id(a) not in consumed and id(b) not in consumed
        consumed.add(id(b))
        a.extend(b)
        return a

    shards = [[i] for i in range(37)]
    result = mergeagg.run(Aggregator(partial, combine), shards, workers=0, fan_in=3)
    assert result.value == list(range(37))
    assert len(consumed) == 36


def test_files_report_bytes_and_tasks(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"a b\nc\n" * 50)
    result = mergeagg.run(mergeagg.algorithms.wordcount(), str(path), workers=0, split_size=64)
    assert result.value == Counter({"a": 50, "b": 50, "c": 50})
    assert result.report.bytes_read == 300
    assert len(result.report.attempts) == 5
    assert "map tasks 5" in str(result.report)
    assert result.report.to_dict()["attempts"] == [1] * 5


def test_failures_name_the_split_and_task():
    def partial(xs):
        if 13 in xs:
            raise RuntimeError("unlucky")
        return sum(xs)

    with pytest.raises(TaskFailed, match=r"partial raised on split shard:2 .*RuntimeError: unlucky"
                       ) as info:
        mergeagg.run(Aggregator(partial, lambda a, b: a + b), [[1], [2], [13]], workers=0)
    assert info.value.split == "shard:2" and info.value.task == "map-2"
    assert "RuntimeError" in info.value.traceback


def test_run_argument_errors():
    with pytest.raises(TypeError, match="run needs an Aggregator, got function"):
        mergeagg.run(lambda x: x, [[1]], workers=0)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="workers must be None or an int >= 0"):
            mergeagg.run(total(), [[1]], workers=bad)
    with pytest.raises(ValueError, match="fan_in must be at least 2"):
        mergeagg.run(total(), [[1]], workers=0, fan_in=1)


def test_result_repr_is_short():
    result = mergeagg.run(concatenation(), [list(range(1000))], workers=0)
    text = repr(result)
    assert text.startswith(f"Result(fingerprint={result.fingerprint[:16]}...")
    assert len(text) < 200
