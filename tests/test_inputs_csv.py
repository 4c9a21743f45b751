"""CSV and TSV files give exactly the rows of Python's csv module, whatever the split size.

A quoted field may hold commas, doubled quotes and line breaks (LF, CR, CRLF), so a line
start is not always a record start; ``files`` aligns each split on a true record start.
Compared here with ``csv.reader`` over the whole file opened as the csv docs say
(``newline=""``, ``utf-8-sig``), on generated files, at random split sizes, and with the
ambiguity window shrunk so that its growing and its two-hypothesis scan are exercised.
"""

import contextlib
import csv
import io
import os
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg import inputs
from mergeagg.errors import InputError

BOM = "\ufeff"
TERMINATORS = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def fields(draw, delimiter):
    kind = draw(st.sampled_from(["plain", "quoted", "quoted", "empty", "odd"]))
    if kind == "empty":
        return ""
    if kind == "plain":
        return draw(st.text(alphabet="ab é0", min_size=1, max_size=4))
    if kind == "quoted":
        parts = draw(st.lists(st.sampled_from(
            ["a", "é", " ", delimiter, '""', "\n", "\r", "\r\n", ",", "\t"]), max_size=6))
        return '"' + "".join(parts) + '"'
    # Quotes csv reads as literals, or a quoted field followed by more text.
    return draw(st.sampled_from(['a"b', 'x""', '"ab"c', '"a""b"x"y', ' "q"', 'z"']))


@st.composite
def csv_documents(draw, delimiter=","):
    """A CSV text: a header and rows of its width (now and then a ragged one), blank lines,
    mixed line ends, maybe a BOM, maybe no final line end, maybe an unterminated quote."""
    width = draw(st.integers(1, 4))
    names = [f"c{i}" for i in range(width)]
    if draw(st.booleans()):
        names[0] = '"c\n0"'  # a header that spans two lines
    lines = [delimiter.join(names)]
    for _ in range(draw(st.integers(0, 10))):
        if draw(st.integers(0, 7)) == 0:
            lines.append("")  # a blank line is no row
            continue
        n = width if draw(st.integers(0, 9)) else draw(st.integers(1, width + 2))
        lines.append(delimiter.join(draw(fields(delimiter)) for _ in range(n)))
    text = ""
    for line in lines:
        text += line + draw(TERMINATORS)
    if not draw(st.integers(0, 3)):
        text = text.rstrip("\r\n")
    if not draw(st.integers(0, 9)):
        text += '"unterminated\n1,2\n'
    return (BOM if draw(st.booleans()) else "") + text


raw_documents = st.builds(
    lambda bom, body: (BOM if bom else "") + body,
    st.booleans(),
    st.text(alphabet='ab,"\n\r\té', max_size=60),
)


@contextlib.contextmanager
def csv_file(text):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "data.csv")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        yield path


@contextlib.contextmanager
def ambiguity_window(size, largest=1 << 14, chunk=1 << 24):
    """Shrink the windows tried before a boundary (and the largest, after which quote
    parity and then the exact scan decide; and parity's chunks), so that small files
    exercise every path."""
    layout = inputs._CsvLayout
    saved = layout.window, layout.max_window, layout.parity_chunk
    layout.window, layout.max_window, layout.parity_chunk = size, largest, chunk
    try:
        yield
    finally:
        layout.window, layout.max_window, layout.parity_chunk = saved


def reference_rows(path, delimiter):
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.reader(f, delimiter=delimiter))


def check_tiling(src, path):
    size = os.path.getsize(path)
    ranges = [(s.start, s.end) for s in src.splits()]
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(s < e for s, e in ranges) or size == 0
    for s in src.splits():
        lo, hi = map(int, s.id.rsplit(":", 1)[1].split("-"))
        assert lo <= s.start < hi or s.start == 0


split_sizes = st.lists(st.integers(1, 90), min_size=1, max_size=4)
# (first window, largest window): windows only; windows then parity; parity straight away.
windows = st.sampled_from([(1, 1 << 14), (2, 1 << 14), (5, 1 << 14), (1024, 1 << 14),
                           (1, 4), (2, 8, 3), (1, 0), (1, 0, 1), (1, 0, 2), (1, 0, 7)])


@pytest.mark.parametrize("fmt, delimiter", [("csv", ","), ("tsv", "\t")])
@given(data=st.one_of(csv_documents(), raw_documents), sizes=split_sizes, window=windows)
def test_each_split_parses_to_the_rows_csv_gives_the_whole_file(fmt, delimiter, data, sizes,
                                                                 window):
    if fmt == "tsv":
        data = data.replace(",", "\t") if "\t" not in data else data
    with csv_file(data) as path:
        want = reference_rows(path, delimiter)
        for size in sizes:
            with ambiguity_window(*window):
                src = inputs.files(path, split_size=size, format=fmt)
            check_tiling(src, path)
            got = []
            for split in src.splits():
                text = src.read(split).text()
                got.extend(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
            assert got == want, (size, [(s.start, s.end) for s in src.splits()])


def expected_records(rows):
    """The documented reading: the first non-blank row is the header, blank rows are no
    rows, and a row of another width than the header is an error (``None`` here)."""
    rows = [r for r in rows if r]
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    if any(len(r) != len(header) for r in body):
        return None
    return [dict(zip(header, r)) for r in body]


@given(data=csv_documents(), sizes=split_sizes, window=windows)
def test_csv_records_are_the_rows_of_the_csv_module_or_a_named_error(data, sizes, window):
    with csv_file(data) as path:
        want = expected_records(reference_rows(path, ","))
        for size in sizes:
            with ambiguity_window(*window):
                src = inputs.files(path, split_size=size)  # .csv: inferred
            if want is None:
                with pytest.raises(InputError, match=r"data\.csv: the CSV row at byte offset "
                                                     r"\d+ .*has \d+ field\(s\), the header"):
                    [r for s in src.splits() for r in src.read(s)]
            else:
                assert [r for s in src.splits() for r in src.read(s)] == want


def test_the_named_error_gives_the_byte_offset_of_the_ragged_row(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b'\xef\xbb\xbfa,b\r\n"x\r\ny",1\r\n1,2,3\r\n')
    for size in (1, 7, 100):
        src = inputs.files(path, split_size=size)
        with pytest.raises(InputError, match=r"r\.csv: the CSV row at byte offset 18 "):
            [r for s in src.splits() for r in src.read(s)]


def test_the_issue_example_counts_two_rows_at_every_split_size(tmp_path):
    path = tmp_path / "ml2.csv"
    path.write_bytes(b'a,b,c\nx,y,"note line1\nfoo,bar,baz"\n1,2,3\n')
    for size in range(1, 45):
        src = inputs.files(path, split_size=size, format="csv")
        rows = [r for s in src.splits() for r in src.read(s)]
        assert rows == [{"a": "x", "b": "y", "c": "note line1\nfoo,bar,baz"},
                        {"a": "1", "b": "2", "c": "3"}], size
        assert ma.run(ma.algorithms.count(), src, workers=0).value == 2


def test_ambiguous_boundaries_fall_back_to_the_known_state(tmp_path):
    # Lines of '""' read the same from inside and outside a quoted field: no window
    # before a boundary decides it, so the state is carried from the previous record start.
    body = '"",x\n' * 50 + '"a\n' + '"",x\n' * 50 + 'b",y\n' + '"",x\n' * 50
    path = tmp_path / "amb.csv"
    path.write_text("h,i\n" + body, newline="")
    want = expected_records(reference_rows(path, ","))
    for window in ((1, 1 << 14), (3, 1 << 14), (1024, 1 << 14), (1, 0), (1, 0, 5)):
        with ambiguity_window(*window):
            for size in (7, 64, 301):
                src = inputs.files(path, split_size=size)
                assert [r for s in src.splits() for r in src.read(s)] == want


def test_a_quoted_field_longer_than_the_split_stays_whole(tmp_path):
    note = "line\n" * 1000 + 'and "quotes", commas'
    path = tmp_path / "long.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["id", "note"], ["1", note], ["2", "short"]])
    src = inputs.files(path, split_size=64)
    assert [r for s in src.splits() for r in src.read(s)] == [
        {"id": "1", "note": note}, {"id": "2", "note": "short"}]
    assert len(src) == 2  # the ranges inside the long field hold no record start


def test_csv_module_errors_are_input_errors_with_an_offset(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("a\n1\n\"" + "x" * (csv.field_size_limit() + 1) + "\"\n")
    src = inputs.files(path, split_size=4)
    with pytest.raises(InputError, match=r"big\.csv: unreadable CSV on the line at byte "
                                         r"offset 4: field larger than field limit"):
        [r for s in src.splits() for r in src.read(s)]


def test_a_well_formed_file_is_decided_by_windows_or_parity_not_the_slow_scan(tmp_path):
    # Doubled quotes, empty quoted fields, quoted line breaks: csv.writer's output. No
    # boundary needs the exact scan from the previous record start (the slow path).
    path = tmp_path / "w.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["a", "b"])
        for i in range(300):
            writer.writerow(["" if i % 3 else 'say "hi"\nbye', i])
    slow = []
    exact = inputs._CsvLayout.inside_at

    def spy(self, p, inside, stop):
        if stop - p > 64:
            slow.append((p, stop))
        return exact(self, p, inside, stop)

    inputs._CsvLayout.inside_at = spy
    try:
        for window in ((1, 0), (1, 0, 13), (2, 32)):
            with ambiguity_window(*window):
                src = inputs.files(path, split_size=97)
            assert [r for s in src.splits() for r in src.read(s)] == expected_records(
                reference_rows(path, ","))
    finally:
        inputs._CsvLayout.inside_at = exact
    assert slow == []
