"""PageRank: the vectorised edge parser, the token table, both modes against
networkx.pagerank, bitwise equality of the modes, measured bytes, and lineage recovery
after a real SIGKILL mid-iteration."""

import json
import os
import signal
import sys

import cloudpickle
import networkx as nx
import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg import Session
from mergeagg.algorithms.pagerank import (
    NotConverged,
    TokenTable,
    load_edges,
    pagerank,
    parse_edge_ids,
    parse_edges,
)
from mergeagg.errors import InputError

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def keys_of(arr):
    if arr.dtype == np.uint64:
        arr = arr.view("S8")
    return [b.decode() for b in arr.tolist()]


# -- parsing -----------------------------------------------------------------------------


def test_parse_keeps_tokens_as_strings_and_skips_comments_and_blank_lines():
    text = "# header\n1 2\n\n  01\t2 # a comment\r\n\nlonger_than_8 x\n#\n"
    b = parse_edges(text)
    assert keys_of(b.src) == ["1", "01", "longer_than_8"]
    assert keys_of(b.dst) == ["2", "2", "x"]
    g = nx.read_edgelist(text.splitlines(), create_using=nx.DiGraph, nodetype=str, data=False)
    assert sorted(g.edges()) == sorted(zip(keys_of(b.src), keys_of(b.dst)))


@pytest.mark.parametrize("text, line", [("a b\nc\n", 2), ("a b c\n", 1), ("a\n", 1)])
def test_a_line_without_exactly_two_tokens_is_named(text, line):
    with pytest.raises(InputError, match=f"line {line} "):
        parse_edges(text, "edges.txt")


def test_parse_in_chunks_equals_one_piece_and_numbers_lines_across_chunks(monkeypatch):
    module = sys.modules["mergeagg.algorithms.pagerank"]  # the module, not the factory
    rng = np.random.default_rng(3)
    lines = [f"n{a}\t{b}_long_token" if a % 7 == 0 else f"{a} {b}"
             for a, b in rng.integers(0, 1000, (300, 2)).tolist()]
    text = "# head\n" + "\n\n".join(lines) + "\n1 2"  # no final newline
    whole = parse_edges(text)
    monkeypatch.setattr(module, "_PARSE_CHUNK", 64)
    pieces = parse_edges(text)
    assert pieces.src.tobytes() == whole.src.tobytes()
    assert pieces.dst.tobytes() == whole.dst.tobytes()
    table = TokenTable(np.unique(np.concatenate([whole.src, whole.dst])))
    src, dst = parse_edge_ids(text, table)  # chunk by chunk, some with long tokens only
    assert np.array_equal(src, table.lookup(whole.src))
    assert np.array_equal(dst, table.lookup(whole.dst))
    bad = text.replace("\n" + lines[250] + "\n", "\n" + lines[250] + " extra\n", 1)
    number = bad.split("\n").index(lines[250] + " extra") + 1
    with pytest.raises(InputError, match=f"line {number} .* 3 token"):
        parse_edges(bad)


def reference_parse(text):
    """Edges of ``text`` by ``str.split`` line by line, or the number of the first line
    without exactly two tokens."""
    edges = []
    for number, line in enumerate(text.split("\n"), 1):
        tokens = line.split("#", 1)[0].split()
        if tokens and len(tokens) != 2:
            return number
        if tokens:
            edges.append(tuple(tokens))
    return edges


@given(st.lists(st.tuples(st.sampled_from(["1", "22", "333", "0x", "a_long_token", "", "7 8"]),
                          st.sampled_from([" ", "\t", "  ", "\v", ""]),
                          st.sampled_from(["9", "10", "", "b c", "longer_than_8"]),
                          st.sampled_from(["\n", " \n", "\r\n", "\n\n", " # c\n"])),
                max_size=40))
@settings(max_examples=300, deadline=None)
def test_parse_equals_a_line_by_line_split(parts):
    # Lines with one separator byte take the fast path, others the general one: both
    # must give str.split's tokens, and name the same bad line.
    text = "".join(a + sep + b + end for a, sep, b, end in parts)
    expected = reference_parse(text)
    if isinstance(expected, int):
        with pytest.raises(InputError, match=f"line {expected} "):
            parse_edges(text)
        return
    b = parse_edges(text)
    assert list(zip(keys_of(b.src), keys_of(b.dst))) == expected


def test_parse_of_an_empty_or_comment_only_text_gives_no_edges():
    assert len(parse_edges("")) == 0 and len(parse_edges("# nothing\n\n")) == 0


def test_a_nul_byte_is_refused():
    with pytest.raises(InputError, match="NUL"):
        parse_edges(b"a\0 b\n")


def test_token_table_of_decimal_tokens_indexes_their_numbers():
    rng = np.random.default_rng(1)
    numbers = np.unique(rng.integers(0, 40_000, 3000))  # dense enough: < 16 n
    text = "".join(f"{a} {b}\n" for a, b in zip(numbers, numbers[::-1]))
    keys = np.unique(parse_edges(text).src)
    t = TokenTable(keys)
    assert t.dense is not None
    probe = parse_edges("".join(f"{a} 0\n" for a in rng.choice(numbers, 5000))).src
    assert np.array_equal(t.lookup(probe), np.searchsorted(keys, probe))
    for missing in ("40001", "007", "12x", "99999999", "longer_than_8"):
        other = str(numbers[5]) if missing != "007" else "7"
        with pytest.raises(KeyError, match=missing):
            t.lookup(parse_edges(f"{other} {missing}\n").dst)
    # "7" and "007" spell the same number: no dense table, the hash table keeps them apart
    both = np.unique(parse_edges("7 007\n007 7\n").src)
    mixed = TokenTable(both)
    assert mixed.dense is None
    probe = parse_edges("007 7\n7 007\n").src
    assert mixed.lookup(probe).tolist() == np.searchsorted(both, probe).tolist() == [1, 0]


def test_token_table_matches_binary_search():
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**63, 5000, dtype=np.uint64))
    t = TokenTable(keys)
    probe = keys[rng.integers(0, len(keys), 20000)]
    assert np.array_equal(t.lookup(probe), np.searchsorted(keys, probe))
    few = np.array([3, 3 + 2**60, 3 + 2**61], dtype=np.uint64)  # same low bits
    assert TokenTable(few).lookup(few[::-1]).tolist() == [2, 1, 0]
    with pytest.raises(KeyError):
        t.lookup(np.array([1], dtype=np.uint64) if 1 not in keys else keys[:0] + 2**63)


# -- against networkx ----------------------------------------------------------------------


def graph(seed, n=120, m=480):
    """Directed G(n, m) with dangling nodes, self-loops and isolated nodes."""
    g = nx.gnm_random_graph(n, m, seed=seed, directed=True)
    rng = np.random.default_rng(seed)
    for u in rng.choice(n, 5, replace=False).tolist():
        g.add_edge(u, u)
    for u in rng.choice(n, 8, replace=False).tolist():  # dangling: no out-edges
        g.remove_edges_from(list(g.out_edges(u)))
    g.add_nodes_from([f"iso{i}" for i in range(3)])
    return g


def l1(ranks, ref):
    assert set(ranks) == set(ref)
    return sum(abs(ranks[k] - ref[k]) for k in ref)


@pytest.fixture(scope="module")
def serial():
    with Session(workers=0) as s:
        yield s


@pytest.fixture(scope="module")
def workers2():
    # No speculative copies: a backup of a cached task runs on a worker that does not hold
    # the partition, and rebuilding it there reads its split (legitimately, but these tests
    # count the reads of the plan, not of the load on the machine).
    with Session(workers=2, backups=False) as s:
        yield s


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("personalized", [False, True])
def test_both_modes_equal_networkx_and_each_other_bitwise(serial, seed, personalized):
    g = graph(seed)
    rng = np.random.default_rng(seed)
    pers = ({n: float(rng.random()) for n in list(g)[::3]} if personalized else None)
    ref = nx.pagerank(g, alpha=0.85, personalization=pers, tol=1e-10, max_iter=200)
    out = {}
    for mode in ("disk", "cached"):
        r = pagerank(g, mode=mode, session=serial, personalization=pers, tol=1e-10,
                     max_iter=200, split_size=1500)
        assert r.converged
        assert l1(r.ranks, ref) < 1e-9
        out[mode] = r
    assert out["disk"].vector.tobytes() == out["cached"].vector.tobytes()
    assert out["disk"].iterations == out["cached"].iterations


def test_dangling_and_nstart_follow_networkx(serial):
    g = graph(3)
    nodes = list(g)
    dangling = {n: 1.0 + (i % 3) for i, n in enumerate(nodes[:40])}
    nstart = {n: 1.0 for n in nodes[10:]}
    ref = nx.pagerank(g, alpha=0.7, dangling=dangling, nstart=nstart, tol=1e-10)
    r = pagerank(g, mode="cached", session=serial, alpha=0.7, dangling=dangling,
                 nstart=nstart, tol=1e-10)
    assert l1(r.ranks, ref) < 1e-9


def write_edges(g, path):
    with open(path, "w") as f:
        f.write("# an edge list\n")
        for u, v in g.edges():
            f.write(f"n{u}\tn{v}\n" if u != v else f"n{u} n{v}   # self-loop\n")
    return str(path)


def test_an_edge_list_file_on_two_workers_equals_networkx_and_the_serial_run(
        serial, workers2, tmp_path):
    g = graph(4, n=200, m=900)
    g.remove_nodes_from([n for n in list(g) if isinstance(n, str)])  # a file has no isolates
    path = write_edges(g, tmp_path / "g.txt")
    ref = nx.pagerank(nx.read_edgelist(path, create_using=nx.DiGraph, nodetype=str,
                                       data=False), tol=1e-10)
    runs = [pagerank(path, mode=mode, session=s, tol=1e-10, split_size=2000)
            for mode in ("disk", "cached") for s in (serial, workers2)]
    for r in runs:
        assert l1(r.ranks, ref) < 1e-9
        assert r.vector.tobytes() == runs[0].vector.tobytes()


# -- bytes read, measured by the readers ---------------------------------------------------


def test_disk_mode_reads_the_edges_every_iteration_cached_mode_once(workers2, tmp_path):
    g = graph(5, n=150, m=600)
    g.remove_nodes_from([n for n in list(g) if isinstance(n, str)])
    path = write_edges(g, tmp_path / "g.txt")
    size = os.path.getsize(path)
    disk = pagerank(path, mode="disk", session=workers2, max_iter=6, strict=False,
                    split_size=1000)
    cached = pagerank(path, mode="cached", session=workers2, max_iter=6, strict=False,
                      split_size=1000)
    assert disk.iterations == cached.iterations == 6
    assert disk.setup_bytes == size  # the node-discovery pass
    assert disk.iteration_edge_bytes == [size] * 6
    assert all(b > size for b in disk.iteration_bytes)  # plus ranks, nodes, out-degrees
    assert cached.setup_bytes == size  # the persist
    assert cached.iteration_bytes == [0] * 6
    assert cached.cache["cache_misses"] == 0 and cached.cache["cache_rebuilds"] == 0
    assert cached.cache["cache_hits"] == 6 * len(ma.files(path, split_size=1000))
    assert disk.vector.tobytes() == cached.vector.tobytes()


# -- lineage recovery ---------------------------------------------------------------------


class KillAt:
    """A session that SIGKILLs a worker holding cached partitions just before the job of
    iteration ``at`` starts: the death is found while that job runs."""

    def __init__(self, session, at):
        self.session = session
        self.at = at
        self.calls = 0
        self.killed = None

    def persist(self, source, load):
        return self.session.persist(source, load=load)

    def run(self, job, source, **kw):
        self._maybe_kill(source)
        return self.session.run(job, source, **kw)

    def collect(self, fn, source, **kw):
        self._maybe_kill(source)
        return self.session.collect(fn, source, **kw)

    def _maybe_kill(self, source):
        self.calls += 1
        if self.calls == self.at + 2:  # after the node-discovery job and `at` iterations
            holder = source.holders[0][0]
            pid = self.session.worker_pids()[holder]
            os.kill(pid, signal.SIGKILL)
            try:
                psutil.Process(pid).wait(10)
            except psutil.NoSuchProcess:
                pass
            self.killed = (holder, sum(1 for h in source.holders.values() if h[0] == holder))


def test_a_killed_worker_partitions_are_rebuilt_and_the_ranks_keep_their_bytes(
        workers2, tmp_path):
    g = graph(6, n=300, m=1500)
    g.remove_nodes_from([n for n in list(g) if isinstance(n, str)])
    path = write_edges(g, tmp_path / "g.txt")
    clean = pagerank(path, mode="cached", session=workers2, tol=1e-10, split_size=1500)
    killer = KillAt(workers2, at=3)
    hit = pagerank(path, mode="cached", session=killer, tol=1e-10, split_size=1500)
    holder, lost = killer.killed
    assert lost >= 1
    assert hit.vector.tobytes() == clean.vector.tobytes()
    assert hit.cache["cache_rebuilds"] == lost
    rebuilt = hit.reports[1 + 3]  # the iteration whose worker died
    assert rebuilt.workers_lost >= 1 and rebuilt.counters["cache_rebuilds"] == lost
    assert hit.iteration_bytes[3] > 0 and sum(hit.iteration_bytes) == hit.iteration_bytes[3]
    assert holder not in workers2.worker_pids()


# -- convergence, arguments, the CLI -----------------------------------------------------


def test_not_converging_raises_like_networkx_unless_told_otherwise(serial):
    g = graph(7)
    with pytest.raises(NotConverged, match="max_iter=2") as info:
        pagerank(g, mode="cached", session=serial, max_iter=2)
    assert info.value.result.iterations == 2 and not info.value.result.converged
    with pytest.raises(nx.PowerIterationFailedConvergence):
        nx.pagerank(g, max_iter=2)
    r = pagerank(g, mode="disk", session=serial, max_iter=2, strict=False)
    assert r.iterations == 2 and not r.converged


def test_bad_arguments_are_named(serial):
    g = graph(8)
    with pytest.raises(ValueError, match="mode"):
        pagerank(g, mode="memory", session=serial)
    with pytest.raises(TypeError, match="session"):
        pagerank(g, mode="cached")
    with pytest.raises(ValueError, match="alpha"):
        pagerank(g, session=serial, alpha=1.5)
    with pytest.raises(ZeroDivisionError, match="personalization"):
        pagerank(g, session=serial, personalization={"nobody": 1.0})


def test_load_edges_reads_a_text_split(tmp_path):
    p = tmp_path / "e.txt"
    p.write_text("a b\nb c\n")
    split = ma.files(str(p)).splits()[0]
    from mergeagg.inputs import read_split

    records = read_split(split)
    assert len(load_edges(records)) == 2 and records.bytes_read == 8


def test_cli_prints_the_top_nodes_and_writes_every_rank(tmp_path, capsys):
    from mergeagg.cli import main

    g = graph(9, n=60, m=240)
    g.remove_nodes_from([n for n in list(g) if isinstance(n, str)])
    path = write_edges(g, tmp_path / "g.txt")
    ref = nx.pagerank(nx.read_edgelist(path, create_using=nx.DiGraph, nodetype=str,
                                       data=False), alpha=0.9, tol=1e-10)
    for mode in ("disk", "cached"):
        out = tmp_path / f"{mode}.json"
        assert main(["run", "pagerank", path, "--mode", mode, "--alpha", "0.9", "--tol",
                     "1e-10", "--max-iter", "300", "--workers", "0", "--json", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "top nodes" in printed and "iterations, converged" in printed
        assert "bytes read" in printed and "per iteration" in printed
        doc = json.loads(out.read_text())
        assert doc["algorithm"] == "pagerank"
        assert l1(doc["value"], ref) < 1e-9
