"""mergeagg.inputs: every record lands in exactly one split, whatever the split size."""

import csv
import gzip
import io
import json
import os
import pickle
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg
from mergeagg import inputs
from mergeagg.errors import InputError

# Lines without line breaks, some non-ASCII (multi-byte UTF-8), some empty, some ending in CR.
line_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
    max_size=30,
)


@st.composite
def file_contents(draw):
    lines = draw(st.lists(line_text, max_size=25))
    if lines and draw(st.booleans()):  # one line longer than any split size drawn below
        at = draw(st.integers(0, len(lines) - 1))
        lines[at] = "L" * draw(st.integers(60, 200))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(lines)
    if lines and draw(st.booleans()):
        text += newline
    return text.encode("utf-8")


def reference_lines(data):
    """The file's lines by the documented rule: split on \\n, drop a trailing CR."""
    text = data.decode("utf-8")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def write(directory, name, data):
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def read_all(src):
    return [list(src.read(s)) for s in src.splits()]


@given(st.lists(file_contents(), min_size=1, max_size=3), st.integers(1, 50))
def test_every_line_lands_in_exactly_one_split(contents, split_size):
    with tempfile.TemporaryDirectory() as d:
        paths = [write(d, f"f{i}.txt", data) for i, data in enumerate(contents)]
        src = inputs.files(paths, split_size=split_size)
        got = [line for split_lines in read_all(src) for line in split_lines]
        want = [line for data in contents for line in reference_lines(data)]
        assert got == want
        # The splits tile each file with consecutive, non-empty byte ranges, each starting on
        # a line start inside its nominal range (the one its id names); a nominal range in
        # which no line starts is no split.
        for path, data in zip(paths, contents):
            mine = [s for s in src.splits() if s.path == os.path.abspath(path)]
            ranges = [(s.start, s.end) for s in mine]
            assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert all(s < e for s, e in ranges) or data == b""
            line_starts = {0} | {i + 1 for i, b in enumerate(data) if b == 10}
            for s in mine:
                lo, hi = map(int, s.id.rsplit(":", 1)[1].split("-"))
                assert s.start in line_starts and (lo <= s.start < hi or s.start == 0)
            nominal_with_a_line = {i // split_size for i in line_starts if i < len(data)}
            assert len(mine) == max(1, len(nominal_with_a_line))
        # text() is the fast path of the same lines (CRs kept); each byte is read once.
        total = 0
        for s in src.splits():
            shard = src.read(s)
            text_lines = inputs._split_lines(shard.text())
            assert [ln.removesuffix("\r") for ln in text_lines] == list(shard)
            total += shard.bytes_read
        assert total == sum(len(data) for data in contents)


@given(file_contents(), st.integers(1, 40))
def test_splits_are_stable_and_picklable(data, split_size):
    with tempfile.TemporaryDirectory() as d:
        path = write(d, "a.txt", data)
        first = inputs.files(path, split_size=split_size)
        second = inputs.files([path], split_size=split_size)
        assert [s.id for s in first.splits()] == [s.id for s in second.splits()]
        assert [s.index for s in first.splits()] == list(range(len(first)))
        assert all(s.id.startswith(os.path.abspath(path) + ":") for s in first.splits())
        copy = pickle.loads(pickle.dumps(first))
        assert read_all(copy) == read_all(first)


def test_empty_files_give_one_empty_split_each(tmp_path):
    empty = write(tmp_path, "empty.txt", b"")
    full = write(tmp_path, "full.txt", b"x\n")
    src = inputs.files([empty, full, empty], split_size=4)
    assert read_all(src) == [[], ["x"], []]
    assert [s.id.rsplit(":", 1)[1] for s in src.splits()] == ["0-0", "0-2", "0-0"]


def test_default_split_size_is_in_the_mapreduce_range():
    assert 16 * 2**20 <= inputs.DEFAULT_SPLIT_SIZE <= 64 * 2**20


def test_lone_cr_is_not_a_line_break(tmp_path):
    path = write(tmp_path, "cr.txt", b"a\rb\r\nc\r")
    assert read_all(inputs.files(path)) == [["a\rb", "c"]]


# -- JSON lines and CSV ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6,
)


@given(st.lists(json_values, max_size=15), st.integers(1, 40), st.booleans())
def test_jsonl_records_split_anywhere(records, split_size, blank_lines):
    with tempfile.TemporaryDirectory() as d:
        sep = "\n\n" if blank_lines else "\n"
        data = sep.join(json.dumps(r) for r in records).encode()
        path = write(d, "r.jsonl", data)
        src = inputs.files(path, split_size=split_size, format="jsonl")
        assert [r for part in read_all(src) for r in part] == records


cells = st.text(alphabet="abc xyz,\"'é0123456789", max_size=6)


@given(st.lists(st.tuples(cells, cells, cells), max_size=12), st.integers(1, 40))
def test_csv_rows_keyed_by_the_header_in_every_split(rows, split_size):
    with tempfile.TemporaryDirectory() as d:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["name", "city", "n"])
        writer.writerows(rows)
        path = write(d, "t.csv", buf.getvalue().encode())
        src = inputs.files(path, split_size=split_size, format="csv")
        got = [r for part in read_all(src) for r in part]
        with open(path, newline="", encoding="utf-8") as f:
            want = list(csv.DictReader(f))
        assert got == want


def test_csv_header_split_from_its_rows(tmp_path):
    path = write(tmp_path, "t.csv", b"a,b\r\n1,2\r\n3,4\r\n")
    src = inputs.files(path, split_size=5, format="csv")
    assert [r for part in read_all(src) for r in part] == [{"a": "1", "b": "2"},
                                                            {"a": "3", "b": "4"}]
    assert len(src) == 3


def test_bad_records_name_the_file(tmp_path):
    bad_json = write(tmp_path, "bad.jsonl", b'{"a": 1}\n{"a": \n')
    with pytest.raises(InputError, match=r"bad\.jsonl: invalid JSON on line 2"):
        read_all(inputs.files(bad_json, format="jsonl"))
    bad_csv = write(tmp_path, "bad.csv", b"a,b\n1,2\n1,2,3\n")
    with pytest.raises(InputError, match=r"bad\.csv: the CSV row at byte offset 8 .* has 3 "
                                         r"field\(s\), the header has 2"):
        read_all(inputs.files(bad_csv, format="csv"))


# -- gzip -----------------------------------------------------------------------------------


@given(file_contents())
def test_gzip_is_one_split_with_the_same_lines(data):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a.txt.gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
        src = inputs.files(path, split_size=3)
        assert len(src) == 1 and src.splits()[0].kind == "gzip"
        assert read_all(src) == [reference_lines(data)]
        shard = src.read(src.splits()[0])
        assert list(shard) == reference_lines(data)
        assert shard.bytes_read == os.path.getsize(path)  # the compressed bytes


def test_gzip_csv_and_jsonl(tmp_path):
    with gzip.open(tmp_path / "t.csv.gz", "wb") as f:
        f.write(b"k,v\nx,1\ny,2\n")
    with gzip.open(tmp_path / "r.jsonl.gz", "wb") as f:
        f.write(b'[1]\n\n{"a": null}\n')
    assert read_all(inputs.files(tmp_path / "t.csv.gz", format="csv")) == [
        [{"k": "x", "v": "1"}, {"k": "y", "v": "2"}]]
    assert read_all(inputs.files(tmp_path / "r.jsonl.gz", format="jsonl")) == [[[1], {"a": None}]]


def test_corrupt_gzip_is_an_input_error(tmp_path):
    path = write(tmp_path, "broken.gz", b"this is not gzip")
    with pytest.raises(InputError, match=r"broken\.gz: not a readable gzip file"):
        read_all(inputs.files(path))


# -- paths, globs and directories -----------------------------------------------------------


def test_directories_are_walked_in_order_skipping_hidden(tmp_path):
    write(tmp_path, "b.txt", b"b\n")
    write(tmp_path, "a/z.txt", b"z\n")
    write(tmp_path, "a/.hidden", b"hidden\n")
    write(tmp_path, ".git/config", b"secret\n")
    src = inputs.files(tmp_path)
    names = [os.path.relpath(s.path, tmp_path) for s in src.splits()]
    assert names == [os.path.join("a", "z.txt"), "b.txt"]
    assert read_all(src) == [["z"], ["b"]]


def test_globs_and_literal_names_with_glob_characters(tmp_path):
    write(tmp_path, "x1.txt", b"1\n")
    write(tmp_path, "x2.txt", b"2\n")
    write(tmp_path, "x3.log", b"3\n")
    write(tmp_path, "sub/x4.txt", b"4\n")
    assert read_all(inputs.files(str(tmp_path / "x*.txt"))) == [["1"], ["2"]]
    # Matches are sorted by path: "sub/x4.txt" sorts before "x1.txt".
    assert read_all(inputs.files(str(tmp_path / "**" / "*.txt"))) == [["4"], ["1"], ["2"]]
    odd = write(tmp_path, "data[1].txt", b"odd\n")
    assert read_all(inputs.files(odd)) == [["odd"]]


def test_missing_inputs_fail_before_any_work(tmp_path):
    calls = []
    agg = mergeagg.Aggregator(lambda shard: calls.append(1) or 0, lambda a, b: a + b)
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(InputError, match=r"no such file or directory: '.*nope\.txt'"):
        mergeagg.run(agg, missing, workers=0)
    write(tmp_path, "ok.txt", b"ok\n")
    with pytest.raises(InputError, match="nope"):
        mergeagg.run(agg, [str(tmp_path / "ok.txt"), missing], workers=0)
    with pytest.raises(InputError, match="matches no files"):
        mergeagg.run(agg, str(tmp_path / "*.csv"), workers=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no"):
        mergeagg.run(agg, tmp_path / "empty", workers=0)
    with pytest.raises(InputError, match="the source is empty"):
        mergeagg.run(agg, [], workers=0)
    with pytest.raises(InputError, match="the source is empty"):
        inputs.shards([])
    with pytest.raises(InputError, match="no input files"):
        inputs.files([])
    assert calls == []


def test_bad_arguments_are_type_or_value_errors(tmp_path):
    path = write(tmp_path, "a.txt", b"a\n")
    with pytest.raises(ValueError, match="format must be one of"):
        inputs.files(path, format="xml")
    with pytest.raises(ValueError, match="unknown errors policy 'bogus'"):
        inputs.files(path, errors="bogus")
    with pytest.raises(TypeError, match="not a single str"):
        inputs.shards("abc")
    with pytest.raises(TypeError, match="cannot read input from a int"):
        inputs.as_source(3)


def test_parse_size():
    assert inputs.parse_size("1k") == 1024
    assert inputs.parse_size(" 2G ") == 2 * 2**30
    assert inputs.parse_size("10MB") == 10 * 2**20
    assert inputs.parse_size("64") == 64
    for bad in ("abc", "1.5M", ""):
        with pytest.raises(ValueError, match="not a byte count"):
            inputs.parse_size(bad)
    for bad in (0, -1, "0K"):
        with pytest.raises(ValueError, match="must be positive"):
            inputs.parse_size(bad)
    with pytest.raises(TypeError, match="int or str"):
        inputs.parse_size(True)


# -- invalid UTF-8 --------------------------------------------------------------------------


@given(st.integers(0, 40), st.integers(1, 30))
def test_invalid_utf8_names_the_file_and_byte_offset(prefix_len, split_size):
    with tempfile.TemporaryDirectory() as d:
        prefix = b"".join(b"ab\n" if i % 3 == 2 else b"x" for i in range(prefix_len))
        data = prefix + b"\xff" + b" tail\nmore\n"
        path = write(d, "bad.txt", data)
        src = inputs.files(path, split_size=split_size)
        with pytest.raises(InputError) as info:
            read_all(src)
        msg = str(info.value)
        assert msg.startswith(os.path.abspath(path) + ": invalid UTF-8 at byte offset "
                              f"{len(prefix)} ")
        assert "errors='replace'" in msg
        replaced = inputs.files(path, split_size=split_size, errors="replace")
        lines = [ln for part in read_all(replaced) for ln in part]
        assert lines == reference_lines(data.replace(b"\xff", "\ufffd".encode()))


def test_invalid_utf8_on_stdin_and_in_gzip(tmp_path):
    with pytest.raises(InputError, match=r"<stdin>: invalid UTF-8 at byte offset 2"):
        inputs.stdin(stream=io.BytesIO(b"ok\xfe\n"))
    src = inputs.stdin(stream=io.BytesIO(b"ok\xfe\n"), errors="ignore")
    assert read_all(src) == [["ok"]]
    with gzip.open(tmp_path / "z.gz", "wb") as f:
        f.write(b"fine\n\xc3(\n")
    with pytest.raises(InputError, match=r"z\.gz \(decompressed\): invalid UTF-8 at byte offset 5"):
        read_all(inputs.files(tmp_path / "z.gz"))


# -- standard input -------------------------------------------------------------------------


def test_stdin_streams_and_formats():
    assert read_all(inputs.stdin(stream=io.BytesIO(b"a b\r\n\nc"))) == [["a b", "", "c"]]
    assert read_all(inputs.stdin(stream=io.StringIO("x\ny\n"))) == [["x", "y"]]
    assert read_all(inputs.stdin(stream=io.BytesIO(b""))) == [[]]
    src = inputs.stdin(stream=io.BytesIO(b'{"a": 1}\n\n[2]\n'), format="jsonl")
    assert read_all(src) == [[{"a": 1}, [2]]]
    src = inputs.stdin(stream=io.BytesIO(b"h1,h2\n1,2\n"), format="csv")
    assert read_all(src) == [[{"h1": "1", "h2": "2"}]]
    assert src.splits()[0].id == "stdin"
    with pytest.raises(ValueError, match="format must be one of"):
        inputs.stdin(stream=io.BytesIO(b""), format="yaml")


def test_dash_means_stdin(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin\n")))
    assert read_all(inputs.as_source("-")) == [["from stdin"]]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"s\n")))
    path = write(tmp_path, "f.txt", b"f\n")
    src = inputs.as_source([path, "-"])
    assert sorted(read_all(src)) == [["f"], ["s"]]


# -- numpy row blocks, in-memory shards, concat ---------------------------------------------


@given(st.integers(1, 30), st.integers(1, 4), st.integers(1, 12))
def test_array_rows_cover_the_array_once(n, width, rows):
    arr = np.arange(n * width, dtype=np.float64).reshape(n, width)
    src = inputs.array_rows(arr, rows=rows)
    blocks = [src.read(s) for s in src.splits()]
    assert all(isinstance(b, np.ndarray) and len(b) <= rows for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), arr)
    assert [s.id for s in src.splits()][0] == f"array:rows:0-{min(rows, n)}"


def test_npy_path_is_memory_mapped_by_the_reader(tmp_path):
    arr = np.arange(20, dtype=np.int32).reshape(10, 2)
    path = tmp_path / "a.npy"
    np.save(path, arr)
    src = inputs.array_rows(path, rows=4)
    assert all(s.payload is None and s.kind == "npy" for s in src.splits())
    copy = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(np.concatenate([copy.read(s) for s in copy.splits()]), arr)
    total = mergeagg.Aggregator(lambda block: int(block.sum()), lambda a, b: a + b)
    assert mergeagg.run(total, src, workers=0).value == int(arr.sum())


def test_array_rows_errors(tmp_path):
    with pytest.raises(InputError, match="no rows"):
        inputs.array_rows(np.zeros((0, 3)))
    with pytest.raises(InputError, match="no rows"):
        inputs.array_rows(np.array(1.0))
    with pytest.raises(ValueError, match="rows must be a positive int"):
        inputs.array_rows(np.zeros((3, 3)), rows=0)
    with pytest.raises(ValueError, match="rows must be a positive int, got True"):
        inputs.array_rows(np.zeros((3, 3)), rows=True)
    with pytest.raises(TypeError, match="ndarray or a .npy path, got list"):
        inputs.array_rows([[1, 2]])
    with pytest.raises(InputError, match="no such file"):
        inputs.array_rows(tmp_path / "missing.npy")


def test_in_memory_shards_and_concat_with_tags(tmp_path):
    left = inputs.shards([[1, 2], [3]])
    path = write(tmp_path, "r.txt", b"r1\nr2\n")
    right = inputs.files(path, tag="right")
    both = inputs.concat(left, right)
    assert [s.index for s in both.splits()] == [0, 1, 2]
    assert read_all(both) == [[1, 2], [3], [("right", "r1"), ("right", "r2")]]
    assert both.read(both.splits()[2]).bytes_read == 6  # tagging keeps the bytes count
    with pytest.raises(TypeError, match="concat takes Sources, got list"):
        inputs.concat(left, [1])
