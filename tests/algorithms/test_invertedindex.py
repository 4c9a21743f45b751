"""Inverted index against a sequential dictionary-of-lists loop, for any sharding."""

import pickle
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.algorithms.invertedindex import (
    index_map,
    invertedindex,
    make_source,
    posting_ids,
    tokenize,
)
from mergeagg.cli import main as cli_main
from mergeagg.testing import assert_failure_invariant

WORDS = st.sampled_from(["apple", "Bob", "cat", "dog", "eel", "fig", "gnu"])
DOC = st.tuples(st.integers(0, 12), st.lists(WORDS, max_size=8).map(" ".join))


def reference(docs, mode):
    """A dictionary of lists, built in one sequential loop."""
    index = {}
    for doc, text in docs:
        for pos, word in enumerate(re.findall(r"\w+", text.lower())):
            index.setdefault(word, []).append((doc, pos))
    out = {}
    for word in sorted(index):
        hits = index[word]
        ids = sorted({d for d, _ in hits})
        if mode == "postings":
            out[word] = ids
        elif mode == "tf":
            out[word] = [(d, sum(1 for e, _ in hits if e == d)) for d in ids]
        else:
            out[word] = [(d, sorted(p for e, p in hits if e == d)) for d in ids]
    return out


@st.composite
def sharded_docs(draw):
    docs = draw(st.lists(DOC, max_size=25))
    cuts = sorted(draw(st.lists(st.integers(0, len(docs)), max_size=5)))
    bounds = [0, *cuts, len(docs)]
    return docs, [docs[a:b] for a, b in zip(bounds, bounds[1:])]


@given(sharded_docs(), st.sampled_from(["postings", "tf", "positions"]), st.integers(2, 5))
def test_index_equals_the_sequential_reference(case, mode, fan_in):
    docs, shards = case
    got = ma.run(invertedindex(mode=mode), shards, workers=0, fan_in=fan_in)
    expected = reference(docs, mode)
    assert got.value == expected
    assert list(got.value) == list(expected)  # words in sorted order too
    assert got.fingerprint == ma.fingerprint(expected)


def test_records_by_field_names_and_null_texts():
    shards = [[{"doc": "b", "body": "Hello world"}, {"doc": "a", "body": None}],
              [{"doc": "a", "body": "hello"}]]
    got = invertedindex(id_field="doc", text_field="body").reduce(shards)
    assert got == {"hello": ["a", "b"], "world": ["b"]}


def test_custom_tokenizer_is_used(tmp_path, capsys):
    got = invertedindex(tokenize=str.split).reduce([[("d", "A a A")]])
    assert got == {"A": ["d"], "a": ["d"]}
    named = invertedindex(tokenize="mergeagg.algorithms.invertedindex:tokenize")
    assert named.reduce([[("d", "A a")]]) == {"a": ["d"]}
    with pytest.raises(ValueError, match="package.module:function"):
        invertedindex(tokenize="split")
    with pytest.raises(ValueError, match="cannot load the tokenizer"):
        invertedindex(tokenize="mergeagg.algorithms.invertedindex:nope")
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"id": 1, "text": "A a"}\n')
    assert cli_main(["run", "invertedindex", str(docs), "--workers", "0",
                     "--tokenize", "builtins:str.split"]) == 2  # not a plain name
    capsys.readouterr()
    assert cli_main(["run", "invertedindex", str(docs), "--workers", "0", "--tokenize",
                     "mergeagg.algorithms.invertedindex:tokenize"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "1 words, 1 postings"


def test_files_are_documents_and_split_files_merge(tmp_path):
    (tmp_path / "one.txt").write_text("red fish\nblue fish\n" * 20)
    (tmp_path / "two.txt").write_text("one fish\n")
    src = ma.files(tmp_path, split_size=16)
    assert len(src) > 2
    got = ma.run(invertedindex(mode="tf"), src, workers=0).value
    one, two = str(tmp_path / "one.txt"), str(tmp_path / "two.txt")
    assert got["fish"] == [(one, 40), (two, 1)]
    assert got["blue"] == [(one, 20)]
    whole = make_source([str(tmp_path / "one.txt"), str(tmp_path / "two.txt")], 16,
                        {"mode": "positions"})
    assert len(whole) == 2
    pos = ma.run(invertedindex(mode="positions"), whole, workers=0).value
    assert pos["red"] == [(one, list(range(0, 80, 4)))]
    with pytest.raises(ma.TaskFailed, match="positions need each file whole"):
        ma.run(invertedindex(mode="positions"), src, workers=0)


def test_bad_documents_and_parameters_raise():
    with pytest.raises(ValueError, match="lacks the field 'id'"):
        invertedindex().reduce([[{"text": "x"}]])
    with pytest.raises(TypeError, match="an \\(id, text\\) pair"):
        invertedindex().reduce([["just text"]])
    with pytest.raises(TypeError, match="text must be a str"):
        index_map([("d", 3)])
    with pytest.raises(ValueError, match="id is null"):
        index_map([(None, "x")])
    with pytest.raises(ValueError, match="mode must be one of"):
        invertedindex(mode="bm25")
    with pytest.raises(TypeError, match="tokenize must be callable"):
        invertedindex(tokenize=3)


@pytest.mark.parametrize("mode", ["postings", "tf", "positions"])
def test_aggregator_and_partials_survive_pickle(mode):
    agg = pickle.loads(pickle.dumps(invertedindex(mode=mode)))
    a = pickle.loads(pickle.dumps(agg.partial([("x", "a b a")])))
    b = agg.partial([("x", "b"), ("y", "a")])
    snapshot = pickle.dumps(b)
    merged = agg.finalize(agg.combine(a, b))
    assert pickle.dumps(b) == snapshot  # the second operand is untouched
    assert merged == invertedindex(mode=mode).reduce([[("x", "a b a")], [("x", "b"), ("y", "a")]])


def test_cli_on_jsonl_and_text(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": 1, "text": "to be or not"}\n{"id": 2, "text": "to be"}\n')
    out_json = tmp_path / "o.json"
    assert cli_main(["run", "invertedindex", str(docs), "--workers", "0",
                     "--json", str(out_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "4 words, 6 postings"
    import json

    assert json.loads(out_json.read_text())["value"]["be"] == [1, 2]
    text = tmp_path / "a.txt"
    text.write_text("x y x\n")
    assert cli_main(["run", "invertedindex", str(text), "--workers", "0",
                     "--mode", "positions"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "2 words, 2 postings"
    assert tokenize("A-b") == ["a", "b"]


@pytest.mark.slow
@pytest.mark.mergeagg_processes
def test_a_worker_death_leaves_the_index_unchanged(tmp_path):
    from mergeagg.runtime.faults import Fault, FaultPlan

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"id": {i}, "text": "w{i % 7} w{i % 3} common"}}\n'
                            for i in range(300)))
    src = ma.files(path, split_size=2048, format="jsonl")
    assert len(src) >= 3
    assert_failure_invariant(invertedindex(mode="tf"), src,
                             plans=[FaultPlan(only={"map-1": {1: Fault("kill")}})])


def test_partial_tables_fingerprint_by_content():
    from mergeagg.algorithms._keyed import KeyedTable

    assert ma.fingerprint(KeyedTable({"x": [1], "y": [2]})) == ma.fingerprint(
        KeyedTable({"y": [2], "x": [1]}))
    assert ma.fingerprint(KeyedTable({"x": [1]})) != ma.fingerprint(KeyedTable({"x": ["1"]}))
    assert ma.fingerprint(KeyedTable({"x": [1]})) != ma.fingerprint(KeyedTable({"x": [1.0]}))
    # not exact in JSON (a dict per key): fingerprinted as the dict itself
    assert ma.fingerprint(KeyedTable({"x": {1: 2}})) != ma.fingerprint(
        KeyedTable({"x": {"1": 2}}))
    tf = invertedindex(mode="tf")
    assert ma.fingerprint(tf.partial([("d", "a b a")])) == ma.fingerprint(
        tf.partial([("d", "b a a")]))


@given(sharded_docs(), st.sampled_from(["postings", "tf", "positions"]), st.integers(1, 4))
def test_keyed_job_gives_the_fold_answer(case, mode, partitions):
    docs, shards = case
    job = invertedindex(mode=mode, keyed=True)
    assert isinstance(job, ma.KeyedJob)
    got = ma.run(job, shards, workers=0, partitions=partitions)
    expected = reference(docs, mode)
    assert got.value == expected
    assert got.fingerprint == ma.run(invertedindex(mode=mode), shards, workers=0).fingerprint


@pytest.mark.slow
def test_keyed_index_on_workers_with_a_death_and_part_files(tmp_path, capsys):
    from mergeagg.runtime.faults import Fault, FaultPlan

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"id": {i}, "text": "w{i % 7} w{i % 3} common"}}\n'
                            for i in range(300)))
    src = ma.files(path, split_size=2048, format="jsonl")
    clean = ma.run(invertedindex(), src, workers=0)
    out = tmp_path / "index"
    keyed = ma.run(invertedindex(keyed=True), src, workers=2, partitions=3, output=str(out),
                   output_format="framed",
                   faults=FaultPlan(only={"map-1": {1: Fault("kill")}}))
    assert keyed.fingerprint == clean.fingerprint
    assert keyed.value.to_dict() == clean.value
    assert cli_main(["run", "invertedindex", str(path), "--workers", "0", "--keyed",
                     "--partitions", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"fingerprint {clean.fingerprint}"


ANY_ID = st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=3), st.booleans())


@given(st.lists(st.tuples(ANY_ID, st.lists(WORDS, max_size=8).map(" ".join)), max_size=25))
def test_postings_map_equals_the_word_at_a_time_loop(docs):
    # The shard-at-a-time map must build exactly the dict the plain loop builds: the same
    # words in first-seen order, each with its documents in record order (repeats kept).
    expected = {}
    for doc, text in docs:
        for word in dict.fromkeys(tokenize(text)):
            expected.setdefault(word, []).append(doc)
    got = index_map(docs)
    ids = {w: posting_ids(acc) for w, acc in got.items()}
    assert list(ids.items()) == list(expected.items())
    assert all(type(a) is type(b) for w in got for a, b in zip(ids[w], expected[w]))
    # packed as int64 bytes exactly when every id is a plain int within int64
    packable = all(type(d) is int and -(2**63) <= d < 2**63 for d, _ in docs)
    assert all(type(acc) is (bytes if packable else list) for acc in got.values())



def summary(capsys):
    """The lines the CLI printed about the index (whatever comes before or after them)."""
    out = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(out) if " words, " in line)
    return [out[first]] + [ln for ln in out[first + 1:] if ln.startswith("   ")]


@pytest.mark.parametrize("mode", ["postings", "tf", "positions"])
def test_a_gzip_text_file_is_one_document_like_the_plain_file(tmp_path, mode):
    import gzip

    text = "Red fish\nblue fish\r\n\nold fish new FISH\n" * 30
    plain, packed = tmp_path / "a.txt", tmp_path / "b.txt.gz"
    plain.write_text(text)
    with gzip.open(packed, "wt", newline="") as f:
        f.write(text)
    agg = invertedindex(mode=mode)
    got_plain = ma.run(agg, make_source([str(plain)], 64, {"mode": mode}), workers=0).value
    got_gz = ma.run(agg, make_source([str(packed)], 64, {"mode": mode}), workers=0).value
    relabel = {str(packed): str(plain)}
    if mode == "postings":
        moved = {w: [relabel[d] for d in ds] for w, ds in got_gz.items()}
    else:
        moved = {w: [(relabel[d], v) for d, v in ds] for w, ds in got_gz.items()}
    assert moved == got_plain
    expected = {"postings": [str(plain)], "tf": [(str(plain), 120)],
                "positions": [(str(plain), [p for i in range(30) for p in (8 * i + 1, 8 * i + 3,
                                                                        8 * i + 5, 8 * i + 7)])]}
    assert got_plain["fish"] == expected[mode]


def test_compressed_records_and_text_files_on_the_command_line(tmp_path, capsys):
    import gzip

    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write('{"id": 1, "text": "to be or not"}\n{"id": 2, "text": "to be"}\n')
    assert cli_main(["run", "invertedindex", str(tmp_path / "d.jsonl.gz"), "--workers",
                     "0"]) == 0
    assert "4 words, 6 postings" in summary(capsys)
    for i in range(3):
        with gzip.open(tmp_path / f"t{i}.txt.gz", "wt") as f:
            f.write(f"common line\nword{i}\n")
    paths = sorted(str(p) for p in tmp_path.glob("t*.txt.gz"))
    assert cli_main(["run", "invertedindex", *paths, "--workers", "0", "--mode",
                     "positions"]) == 0
    assert summary(capsys)[:3] == ["5 words, 9 postings", "         3  common",
                                   "         3  line"]
    # --format overrides the extension: the same .gz read as records
    assert cli_main(["run", "invertedindex", paths[0], "--workers", "0", "--format",
                     "jsonl"]) == 1
    assert "invalid JSON" in capsys.readouterr().err


def test_top_orders_ties_naturally(tmp_path, capsys):
    from mergeagg.algorithms.invertedindex import natural_key

    for i in range(12):
        (tmp_path / f"d{i}.txt").write_text(f"n{i} {i} all\n")
    assert cli_main(["run", "invertedindex", str(tmp_path), "--workers", "0", "--top",
                     "14"]) == 0
    words = [line.split()[1] for line in summary(capsys)[1:]]
    assert words == ["all", *map(str, range(12)), "n0"]
    assert sorted(["x10", "x9", "X1", "07", "7", 3, None], key=natural_key) == [
        "07", "7", "X1", "x9", "x10", None, 3]


@given(st.lists(st.text("ab0129\u0663", max_size=6), max_size=12), st.randoms())
def test_natural_order_is_total_and_numbers_sort_as_numbers(words, rnd):
    from mergeagg.algorithms.invertedindex import natural_key

    once = sorted(words, key=natural_key)
    shuffled = list(words)
    rnd.shuffle(shuffled)
    assert sorted(shuffled, key=natural_key) == once  # no two distinct words tie
    numbers = [w for w in once if w.isdecimal()]
    assert [int(w) for w in numbers] == sorted(int(w) for w in numbers)


MIXED_ID = st.one_of(st.integers(-(2**65), 2**65), st.integers(0, 9), st.text("ab", max_size=2))


@given(st.lists(st.lists(st.tuples(MIXED_ID, st.lists(WORDS, max_size=5).map(" ".join)),
                         max_size=6), min_size=1, max_size=5), st.integers(1, 3))
def test_packed_and_listed_postings_merge_to_the_reference(shards, partitions):
    # Shards of int ids travel as int64 bytes, others (big ints, strs) as lists; any mix of
    # them merges into the same sorted, distinct posting lists, fold or keyed.
    from mergeagg.algorithms._keyed import order_key

    index = {}
    for shard in shards:
        for doc, text in shard:
            for word in tokenize(text):
                index.setdefault(word, set()).add(doc)
    expected = {w: sorted(ids, key=order_key) for w, ids in sorted(index.items())}
    fold = ma.run(invertedindex(), shards, workers=0)
    keyed = ma.run(invertedindex(keyed=True), shards, workers=0, partitions=partitions)
    assert fold.value == expected and keyed.value == expected
    assert fold.fingerprint == keyed.fingerprint == ma.fingerprint(expected)


def test_long_packed_posting_lists_are_sorted_and_distinct_in_numpy():
    from mergeagg.algorithms.invertedindex import combine_postings, finalize_postings

    combine, finalize = combine_postings("postings"), finalize_postings("postings")
    first = index_map([(i, "w") for i in range(0, 300, 2)])["w"]
    second = index_map([(i, "w") for i in range(100, 400, 3)])["w"]
    assert type(first) is bytes and len(first) == 8 * 150
    merged = finalize(combine(first, second))
    assert merged == sorted(set(range(0, 300, 2)) | set(range(100, 400, 3)))
    assert finalize(index_map([(i, "w") for i in range(200)])["w"]) == list(range(200))
    assert finalize(combine(index_map([(5, "w")])["w"], [3, "x"])) == [3, 5, "x"]
