"""Near-duplicate detection: precision and recall on a planted corpus, the same groups for
any splitting, document naming, replaceable shingling and the command line."""

import itertools
import random

import pytest

import mergeagg
from mergeagg import errors as ma_errors
from mergeagg.algorithms.dedup import DedupState, Shingles, dedup
from mergeagg.errors import IncompatibleMergeError
from mergeagg.testing import (
    LawViolation,
    assert_failure_invariant,
    assert_laws,
    assert_partition_independent,
    records,
)


def _jaccard(a, b, shingles):
    x, y = set(shingles(a)), set(shingles(b))
    return len(x & y) / len(x | y)


def _planted_corpus(seed=1, bases=300, threshold=0.8):
    """Lines with known clusters: near-duplicate variants (Jaccard >= threshold + 0.1 with
    their base), exact copies, and distractors (a base with 40% of its words replaced,
    Jaccard well below the threshold) that must stay apart."""
    rng = random.Random(seed)
    sh = Shingles(5)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
             for _ in range(3000)]
    lines, cluster = [], []
    for c in range(bases):
        words = [rng.choice(vocab) for _ in range(rng.randint(35, 50))]
        base = " ".join(words)
        lines.append(base)
        cluster.append(c)
        kind = c % 5
        if kind == 0:  # near duplicates: one or two words replaced
            for _ in range(rng.randint(1, 3)):
                while True:
                    w = list(words)
                    for _ in range(rng.randint(1, 2)):
                        w[rng.randrange(len(w))] = rng.choice(vocab)
                    variant = " ".join(w)
                    if variant != base and _jaccard(base, variant, sh) >= threshold + 0.1:
                        break
                lines.append(variant)
                cluster.append(c)
        elif kind == 1:  # exact copies, some with different case and spacing (near: J = 1)
            lines.append(base)
            cluster.append(c)
            lines.append("  " + base.upper())
            cluster.append(c)
        elif kind == 3:  # a plain exact copy
            lines.append(base)
            cluster.append(c)
        elif kind == 2:  # a distractor: its own cluster
            w = list(words)
            for i in rng.sample(range(len(w)), int(0.4 * len(w))):
                w[i] = rng.choice(vocab)
            distractor = " ".join(w)
            assert _jaccard(base, distractor, sh) < threshold - 0.2
            lines.append(distractor)
            cluster.append(bases + c)
    order = list(range(len(lines)))
    rng.shuffle(order)
    return [lines[i] for i in order], [cluster[i] for i in order]


def _pairs_by(labels):
    by = {}
    for i, c in enumerate(labels):
        by.setdefault(c, []).append(i)
    return {p for members in by.values() for p in itertools.combinations(sorted(members), 2)}


def test_precision_and_recall_on_a_planted_corpus(tmp_path):
    lines, cluster = _planted_corpus()
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    result = mergeagg.run(dedup(threshold=0.8), str(path), workers=0, split_size="8K")
    found = {}
    for g, group in enumerate(result.value["groups"]):
        for member in group["members"]:
            found[int(member.rsplit(":", 1)[1]) - 1] = g
    predicted = _pairs_by([found.get(i, ("alone", i)) for i in range(len(lines))])
    truth = _pairs_by(cluster)
    hits = len(predicted & truth)
    precision = hits / len(predicted)
    recall = hits / len(truth)
    assert len(truth) > 150
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert result.value["documents"] == len(lines)
    assert any(g["exact"] for g in result.value["groups"])
    assert any(not g["exact"] for g in result.value["groups"])


def test_the_same_groups_and_fingerprint_for_any_splitting(tmp_path):
    lines, _ = _planted_corpus(seed=2, bases=60)
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines) + "\n")
    runs = [mergeagg.run(dedup(threshold=0.7), str(path), workers=0, split_size=s, fan_in=f)
            for s, f in [("1K", 2), ("5K", 8), ("1M", 8)]]
    assert len({r.fingerprint for r in runs}) == 1
    in_memory = dedup(threshold=0.7).reduce([[(str(i + 1), t) for i, t in enumerate(lines)]])
    from_files = sorted([int(m.rsplit(":", 1)[1]) for m in g["members"]]
                        for g in runs[0].value["groups"])
    assert from_files == sorted(sorted(map(int, g["members"])) for g in in_memory["groups"])
    assert len(from_files) > 10


def _named(lines):
    return [(f"d{i}", text) for i, text in enumerate(lines)]


def test_the_laws_and_any_split_of_named_documents():
    lines, _ = _planted_corpus(seed=3, bases=12)
    docs = _named(lines)
    assert_laws(dedup(threshold=0.7), records(docs, max_size=12), max_examples=25)
    assert_partition_independent(dedup(threshold=0.7), docs, max_examples=25)


def test_plain_strings_are_named_by_their_shard_so_splitting_them_renames_them():
    # In-memory lines without keys are named shard-<digest>:<index>: the kit shows that
    # those names (not the groups) depend on the split. Name documents with pairs instead.
    with pytest.raises(LawViolation, match="depends on how the records are split"):
        assert_partition_independent(dedup(threshold=0.7), ["a b c d e f", "a b c d e f"],
                                     max_examples=25)


def test_failures_leave_the_groups_unchanged(tmp_path):
    lines, _ = _planted_corpus(seed=4, bases=20)
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines) + "\n")
    assert_failure_invariant(dedup(threshold=0.7), mergeagg.files(str(path), split_size="2K"),
                             fan_in=3, max_examples=20)


def test_line_numbers_count_blank_lines_and_files_are_named(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("hello world again\n\n   \nsomething else entirely\n")
    b.write_text("other\nhello world again\n")
    r = mergeagg.run(dedup(), [str(a), str(b)], workers=0, split_size="8")
    assert r.value["groups"] == [
        {"members": [f"{a}:1", f"{b}:2"], "exact": True}]
    assert r.value["documents"] == 4 and r.value["distinct"] == 3


def test_keyed_records_and_bad_records():
    agg = dedup(threshold=0.5)
    out = agg.reduce([[("x", "one two three four"), (7, "one two three four")]])
    assert out["groups"] == [{"members": ["7", "x"], "exact": True}]
    with pytest.raises(TypeError, match="record 0 is a int"):
        agg.partial([42])
    with pytest.raises(TypeError, match="record 1 is a tuple"):
        agg.partial([("k", "text"), ("k", 5)])


def test_structured_input_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n')
    with pytest.raises(ma_errors.TaskFailed, match="dedup reads lines of text"):
        mergeagg.run(dedup(), str(path), workers=0, format="jsonl")


def test_shingling_is_replaceable():
    # Word 1-grams: the two lines are the same set of words, so they are near duplicates.
    lines = [[("a", "red green blue"), ("b", "blue red green")]]
    assert dedup(threshold=0.9).reduce(lines)["groups"] == []
    words = dedup(threshold=0.9, shingles=Shingles(1, words=True)).reduce(lines)
    assert words["groups"] == [{"members": ["a", "b"], "exact": False}]
    mine = dedup(threshold=0.9, shingles=lambda text: sorted(text.split())).reduce(lines)
    assert mine["groups"] == words["groups"]
    assert Shingles(3)("ab") == ["ab"] and Shingles(2, words=True)("x") == ["x"]
    assert Shingles(2, normalize=False)("Ab") == ["Ab"]


def test_bad_parameters_and_incompatible_states():
    with pytest.raises(ValueError, match="strictly between"):
        dedup(threshold=1.2)
    with pytest.raises(TypeError, match="threshold must be a float"):
        dedup(threshold="0.8")
    with pytest.raises(TypeError, match="must be callable"):
        dedup(shingles=5)
    a = DedupState(0.8, 128, 0, Shingles(5))
    b = DedupState(0.7, 128, 0, Shingles(5))
    with pytest.raises(IncompatibleMergeError, match="threshold: 0.8 != 0.7"):
        a.merge(b)
    c = DedupState(0.8, 128, 0, Shingles(4))
    with pytest.raises(IncompatibleMergeError, match="shingles"):
        a.merge(c)


def test_states_and_aggregators_pickle_and_fingerprint_alike():
    import pickle

    agg = pickle.loads(pickle.dumps(dedup(threshold=0.6, shingles=Shingles(3, words=True))))
    shard = [("a", "one two three four five"), ("b", "one two three four six")]
    state = agg.partial(shard)
    copy = pickle.loads(pickle.dumps(state))
    assert mergeagg.fingerprint(copy) == mergeagg.fingerprint(state)
    assert agg.finalize(copy) == agg.finalize(state)


def test_cli_dedup(tmp_path, capsys):
    from mergeagg.cli import main

    path = tmp_path / "d.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\nunrelated line here\n"
                    "the quick brown fox jumps over the lazy dog!\n")
    assert main(["run", "dedup", str(path), "--workers", "0", "--threshold", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "1 duplicate groups (0 exact, 1 near)" in out and f"{path}:1, {path}:3" in out
    assert mergeagg.algorithms.dedup is dedup
