"""mergeagg.inputs: byte-order marks, formats inferred from names, compressed files, and
what a list of strings means."""

import bz2
import gzip
import lzma

import pytest

import mergeagg as ma
from mergeagg import inputs
from mergeagg.errors import InputError

BOM = b"\xef\xbb\xbf"


def records(src):
    return [r for s in src.splits() for r in src.read(s)]


@pytest.mark.parametrize("split_size", [1, 2, 3, 4, 5, 100])
def test_a_bom_is_skipped_in_text_jsonl_and_csv(tmp_path, split_size):
    (tmp_path / "t.txt").write_bytes(BOM + b"to be\nor not\n")
    (tmp_path / "r.jsonl").write_bytes(BOM + b'{"a": 1}\n{"a": 2}\n')
    (tmp_path / "bl.csv").write_bytes(BOM + b"k,a\r\n1,x\r\n2,y\r\n")
    assert records(inputs.files(tmp_path / "t.txt", split_size=split_size)) == ["to be", "or not"]
    assert records(inputs.files(tmp_path / "r.jsonl", split_size=split_size)) == [{"a": 1},
                                                                                  {"a": 2}]
    assert records(inputs.files(tmp_path / "bl.csv", split_size=split_size)) == [
        {"k": "1", "a": "x"}, {"k": "2", "a": "y"}]
    first = inputs.files(tmp_path / "t.txt", split_size=split_size).splits()[0]
    assert inputs.read_split(first).text().startswith("to be")
    got = ma.run(ma.algorithms.sum(field="k"), str(tmp_path / "bl.csv"), workers=0,
                 split_size=split_size, format="csv")
    assert got.value == 3


def test_a_bom_only_at_the_start_and_on_stdin(tmp_path):
    import io

    (tmp_path / "mid.txt").write_bytes(b"a\n" + BOM + b"b\n")
    assert records(inputs.files(tmp_path / "mid.txt")) == ["a", "\ufeffb"]  # data, kept
    src = inputs.stdin(stream=io.BytesIO(BOM + b"k\n1\n"), format="csv")
    assert records(src) == [{"k": "1"}]


@pytest.mark.parametrize("name, fmt", [("a.csv", "csv"), ("a.TSV", "tsv"), ("a.jsonl", "jsonl"),
                                       ("a.ndjson", "jsonl"), ("a.csv.gz", "csv"),
                                       ("a.tsv.bz2", "tsv"), ("a.jsonl.xz", "jsonl"),
                                       ("a.txt", "text"), ("a.gz", "text"), ("csv", "text")])
def test_the_format_is_inferred_from_the_name(name, fmt):
    assert inputs.infer_format(name) == fmt


@pytest.mark.parametrize("suffix, opener", [(".gz", gzip.open), (".bz2", bz2.open),
                                            (".xz", lzma.open)])
def test_compressed_files_are_read_whole_and_their_format_inferred(tmp_path, suffix, opener):
    data = BOM + b'k\tnote\r\n1\t"two\r\nlines"\r\n2\tx\r\n'
    path = tmp_path / f"t.tsv{suffix}"
    with opener(path, "wb") as f:
        f.write(data)
    src = inputs.files(path, split_size=2)
    assert len(src) == 1 and src.splits()[0].format == "tsv"
    assert records(src) == [{"k": "1", "note": "two\r\nlines"}, {"k": "2", "note": "x"}]
    shard = src.read(src.splits()[0])
    list(shard)
    assert shard.bytes_read == path.stat().st_size and shard.columns == ("k", "note")
    plain = tmp_path / f"lines.txt{suffix}"
    with opener(plain, "wb") as f:
        f.write("é\nb\n".encode())
    assert records(inputs.files(plain)) == ["é", "b"]
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(b"not compressed at all")
    with pytest.raises(InputError, match=rf"broken\{suffix}: not a readable"):
        records(inputs.files(broken))


def test_an_explicit_format_overrides_the_name(tmp_path):
    (tmp_path / "t.csv").write_text("k,a\n1,x\n")
    assert records(inputs.files(tmp_path / "t.csv", format="text")) == ["k,a", "1,x"]
    with pytest.raises(ValueError, match="format must be one of"):
        inputs.files(tmp_path / "t.csv", format="xml")


def test_a_list_of_strings_that_are_not_files_says_how_to_pass_text():
    with pytest.raises(InputError, match=r"no such file or directory: 'to be or not'; .*"
                                         r"pass a list of shards.*mergeagg\.shards"):
        ma.run(ma.algorithms.wordcount(), ["to be or not", "to be"], workers=0)
    with pytest.raises(InputError, match=r"mergeagg\.shards"):
        inputs.as_source("to be or not")
    # What the message proposes works.
    assert ma.run(ma.algorithms.wordcount(), [["to be or not"], ["to be"]],
                  workers=0).value["be"] == 2


def test_a_missing_path_is_not_taken_for_text(tmp_path):
    with pytest.raises(InputError) as info:
        inputs.as_source([str(tmp_path / "missing.txt")])
    assert "shards" not in str(info.value)


def test_one_long_line_is_one_task_with_the_same_answer(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("w " * 5000 + "\nend\n")
    whole = ma.run(ma.algorithms.wordcount(), str(path), workers=0)
    cut = ma.run(ma.algorithms.wordcount(), str(path), workers=0, split_size=64)
    src = inputs.files(path, split_size=64)
    assert [s.id.rsplit(":", 1)[1] for s in src.splits()] == ["0-64", "9984-10005"]
    assert len(cut.report.tasks) == 2
    assert cut.value == whole.value and cut.fingerprint == whole.fingerprint


def test_an_empty_csv_has_no_header_to_check(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "full.csv").write_bytes(b"k\n1\n")
    src = inputs.files([tmp_path / "empty.csv", tmp_path / "full.csv"])
    assert [src.read(s).columns for s in src.splits()] == [None, ("k",)]
    assert ma.run(ma.algorithms.sum(field="k"), src, workers=0).value == 1


def test_run_and_a_session_infer_the_format_from_the_name_too(tmp_path):
    (tmp_path / "prices.csv").write_text("item,price\ntea,2\njam,3\n")
    path = str(tmp_path / "prices.csv")
    assert ma.run(ma.algorithms.sum(field="price"), path, workers=0).value == 5
    with ma.Session(workers=0) as s:
        assert s.run(ma.algorithms.sum(field="price"), path).value == 5
        assert s.run(ma.algorithms.sum(field="price"), path, format="csv").value == 5
