"""The Dask backend on a LocalCluster of two worker processes (tests/runtime/conftest.py).

Every answer is compared with the serial run (``workers=0``), the reference. Most tests go
through ``mergeagg.run(..., backend=client)``; a few call ``run_dask`` directly.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest

import mergeagg as ma
from mergeagg.errors import NondeterminismError, TaskFailed
from mergeagg.fingerprint import fingerprint
from mergeagg.inputs import as_source
from mergeagg.runtime.faults import Fault, FaultPlan
from mergeagg.runtime.master import PolicyConfig
from mergeagg.runtime.port import AttemptId, Launch

pytest.importorskip("distributed")

from mergeagg.runtime.dask import INSTALL_HINT, run_attempt, run_dask  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.dask

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta"]


def shards(n, lines=30):
    return [[" ".join(WORDS[(i * 5 + j + k) % 6] for j in range(1 + (i + k) % 7))
             for k in range(lines)] for i in range(n)]


def run_on(client, aggregator, source, **knobs):
    """``mergeagg.run`` on Dask (``backend=client``, which calls run_dask)."""
    return ma.run(aggregator, source, backend=client, **knobs)


def recording_wordcount(pid_dir, sleep):
    """Word count whose partial leaves its worker's pid in ``pid_dir`` and then sleeps."""
    count = ma.algorithms.wordcount()

    def partial(shard):
        open(os.path.join(pid_dir, str(os.getpid())), "w").close()
        time.sleep(sleep)
        return count.partial(shard)

    return ma.Aggregator(partial, count.combine)


def test_fold_gives_the_serial_fingerprint(dask_client, tmp_path):
    paths = []
    for f in range(3):
        p = tmp_path / f"part{f}.txt"
        p.write_text("\n".join(" ".join(s) for s in shards(40)[f::3]) + "\n")
        paths.append(str(p))
    agg = ma.algorithms.wordcount()
    serial = ma.run(agg, paths, workers=0, split_size=700, fan_in=3)
    result = run_on(dask_client, agg, paths, split_size=700, fan_in=3)
    assert len(serial.report.attempts) >= 10
    assert result.fingerprint == serial.fingerprint
    assert result.value == serial.value
    report = result.report
    assert report.mode == "dask"
    assert report.workers == 2 and report.counters["dask_workers"] == 2
    assert not report.failures
    # Tiny tasks on a fresh cluster may get backups (the first ones on each worker are
    # slower); nothing else runs twice.
    extra = sum(t.attempts - 1 for t in report.tasks)
    assert extra == report.backups_launched
    assert report.bytes_read == sum(os.path.getsize(p) for p in paths)
    assert {t.worker.rsplit("/", 1)[0] for t in report.tasks} <= set(
        dask_client.scheduler_info(n_workers=-1)["workers"])
    assert '"mode": "dask"' in report.to_json()


def test_float_fold_is_byte_identical_to_serial(dask_client):
    data = [[0.1 * i + 1e-9 * j for j in range(50)] for i in range(23)]
    agg = ma.Aggregator(sum, lambda a, b: a + b)
    serial = ma.run(agg, data, workers=0, fan_in=4)
    result = run_on(dask_client, agg, data, fan_in=4)
    assert result.fingerprint == serial.fingerprint


def test_run_dask_with_a_scheduler_address(dask_client):
    data = shards(9)
    agg = ma.algorithms.wordcount()
    address = dask_client.scheduler.address
    value, report = run_dask(agg, as_source(data), client=address, fan_in=2,
                             config=PolicyConfig(), progress=False)
    assert fingerprint(value) == ma.run(agg, data, workers=0, fan_in=2).fingerprint
    assert report.mode == "dask" and len(report.tasks) == 9 + 8


def test_a_worker_killed_mid_job_gives_the_clean_fingerprint(dask_client, tmp_path):
    data = shards(16)
    clean = ma.run(ma.algorithms.wordcount(), data, workers=0, fan_in=4)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    killed = []

    def killer():
        deadline = time.monotonic() + 30
        while not killed and time.monotonic() < deadline:
            pids = sorted(int(p) for p in os.listdir(pid_dir))
            if len(pids) >= 2:  # both workers are busy: kill one mid-task
                time.sleep(0.1)
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = run_on(dask_client, recording_wordcount(str(pid_dir), 0.15), data, fan_in=4)
    thread.join(5)
    assert killed, "the test never saw two workers at work"
    assert result.fingerprint == clean.fingerprint
    report = result.report
    assert report.workers_lost >= 1
    assert any(f.cause.startswith("worker lost") or f.cause == "output lost with worker"
               for f in report.failures)
    assert sum(report.attempts) > len(report.attempts)  # something ran again
    assert str(killed[0]) in os.listdir(pid_dir)


def test_a_hung_worker_is_found_by_missed_heartbeats_and_replaced(dask_client):
    data = shards(8)
    clean = ma.run(ma.algorithms.wordcount(), data, workers=0, fan_in=4)
    before = set(dask_client.scheduler_info(n_workers=-1)["workers"])
    # map-2's first attempt stops its worker process (SIGSTOP): alive to the OS, silent to
    # the scheduler; no backups, so only the heartbeat check can save the job.
    plan = FaultPlan(only={"map-2": {1: Fault("hang")}})
    start = time.monotonic()
    value, report = run_dask(ma.algorithms.wordcount(), as_source(data), client=dask_client,
                             fan_in=4, config=PolicyConfig(backups=False, heartbeat_timeout=2.0),
                             faults=plan, progress=False, watch_heartbeats=True)
    assert time.monotonic() - start < 10
    assert fingerprint(value) == clean.fingerprint
    assert report.workers_lost >= 1 and report.attempts[2] >= 2
    assert any(f.task == "map-2" and f.detail == "missed heartbeats" for f in report.failures)
    # Its nanny replaces it: a worker under a new address joins.
    dask_client.wait_for_workers(2, timeout=60)
    deadline = time.monotonic() + 30
    while set(dask_client.scheduler_info(n_workers=-1)["workers"]) <= before \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(dask_client.scheduler_info(n_workers=-1)["workers"]) - before


def test_a_straggler_gets_a_backup_that_wins(dask_client, tmp_path):
    data = shards(8)
    slow = recording_wordcount(str(tmp_path), 0.1)
    clean = ma.run(slow, data, workers=0)
    # map-3's first attempt sleeps 49 times its own ~0.1 s after computing its output.
    plan = FaultPlan(only={"map-3": {1: Fault("delay", factor=50)}})
    start = time.monotonic()
    result = run_on(dask_client, slow, data, faults=plan)
    elapsed = time.monotonic() - start
    assert result.fingerprint == clean.fingerprint
    report = result.report
    assert report.attempts[3] == 2
    assert report.backups_won >= 1 and report.backups_launched >= report.backups_won
    straggler = next(t for t in report.tasks if t.task == "map-3")
    assert straggler.seconds < 2.0  # the backup's time, not the delayed attempt's ~5 s
    assert f"backups launched {report.backups_launched}, won {report.backups_won}" \
        in str(report)
    assert not report.failures
    # The loser noticed its cancel and stopped sleeping: the job did not wait ~5 s for it.
    assert elapsed < 3.5


def line_by_line(shard):
    """A partial that iterates its records and takes 2 ms over each."""
    n = 0
    for line in shard:
        time.sleep(0.002)
        n += len(line)
    return n


@pytest.fixture
def line_files(tmp_path):
    paths = []
    for i in range(6):
        p = tmp_path / f"lines-{i}.txt"
        p.write_text("".join(f"line {i} {j}\n" for j in range(150)))
        paths.append(str(p))
    return paths


def test_a_dask_worker_reports_a_running_map_attempt_s_progress(dask_client, line_files,
                                                                 progress_of):
    from mergeagg.runtime.dask import DaskExecutor

    ex = DaskExecutor(dask_client)
    total, by_task = progress_of(ex, ma.Aggregator(line_by_line, lambda a, b: a + b),
                                 line_files[:2])
    assert total == sum(os.path.getsize(p) - 150 for p in line_files[:2])
    # 150 records over about 0.3 s each: a report part-way through, then rising.
    assert set(by_task) == {"map-0", "map-1"}
    for reports in by_task.values():
        fractions = [ev.fraction for ev in reports]
        assert fractions == sorted(fractions) and 0.1 < fractions[0] < 0.95
        assert all(ev.worker in ex.slots() for ev in reports)  # a slot the policy knows


def test_late_backs_up_on_dask_the_slow_attempt_it_finds_by_its_progress(dask_client,
                                                                         line_files):
    from mergeagg.runtime.speculation import Late

    agg = ma.Aggregator(line_by_line, lambda a, b: a + b)
    clean = ma.run(agg, line_files, workers=0)
    plan = FaultPlan(only={"map-2": {1: Fault("delay", factor=30.0)}})
    start = time.monotonic()
    result = run_on(dask_client, agg, line_files, faults=plan,
                    speculation=Late(interval=0.1))
    elapsed = time.monotonic() - start
    assert result.fingerprint == clean.fingerprint and result.value == clean.value
    report = result.report
    straggler = next(t for t in report.tasks if t.task == "map-2")
    assert straggler.attempts == 2 and straggler.seconds < 2.0  # its backup's time
    # LATE, as in its paper, may also race the slower of two attempts running side by
    # side (one of two is always in the slowest quarter); never more than one at once.
    assert report.backups_won >= 1 and report.backups_launched <= len(line_files)
    assert elapsed < 0.3 * 30 / 2  # it did not wait for the delayed attempt (9 s)


def test_a_nondeterministic_partial_is_caught(dask_client):
    data = shards(6)
    plan = FaultPlan(only={"map-2": {1: Fault("corrupt")}})
    with pytest.raises(NondeterminismError, match="task map-2") as info:
        run_on(dask_client, ma.algorithms.wordcount(), data, faults=plan, verify=1.0)
    assert info.value.task == "map-2"
    assert len(set(info.value.fingerprints)) == 2


def test_user_code_that_raises_fails_the_job_with_a_named_error(dask_client):
    def picky(shard):
        if any("gamma gamma" in line for line in shard):
            raise ValueError("no repeated gamma")
        return len(shard)

    data = [["alpha"], ["beta"], ["gamma gamma"], ["delta"]]
    with pytest.raises(TaskFailed, match=r"task map-2 .*failed 2 time\(s\).*no repeated gamma") \
            as info:
        run_on(dask_client, ma.Aggregator(picky, lambda a, b: a + b), data, max_attempts=2)
    assert "ValueError" in info.value.traceback


def test_a_scheduler_address_through_run(dask_client):
    data = shards(5)
    result = run_on(dask_client.scheduler.address, ma.algorithms.wordcount(), data)
    assert result.fingerprint == ma.run(ma.algorithms.wordcount(), data, workers=0).fingerprint
    assert result.report.mode == "dask"


def test_a_wrong_client_type_is_a_type_error():
    with pytest.raises(TypeError, match="dask.distributed.Client or a scheduler address"):
        run_dask(ma.algorithms.wordcount(), as_source([["a"]]), client=42, fan_in=2,
                 config=PolicyConfig())


def test_without_dask_mergeagg_imports_and_the_backend_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['dask'] = sys.modules['distributed'] = None\n"
        "import mergeagg, mergeagg.runtime.dask as d\n"
        "assert mergeagg.run(mergeagg.Aggregator(len, int.__add__), [[1]], workers=0).value == 1\n"
        "for ask in (d.require_dask, lambda: mergeagg.run(\n"
        "        mergeagg.Aggregator(len, int.__add__), [[1]], backend='tcp://127.0.0.1:9')):\n"
        "    try:\n"
        "        ask()\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(INSTALL_HINT) == 2, out.stdout


def test_a_combine_refuses_an_input_recomputed_with_another_fingerprint(dask_client):
    # What a combine does when Dask hands it an input whose fingerprint is not the one the
    # policy recorded (Dask recomputed it behind the policy's back and it came out different).
    job = cloudpickle.dumps((ma.algorithms.wordcount(), None))
    split = as_source([["a b a"]]).splits()[0]

    def attempt(key, kind, expected, *inputs):
        launch = Launch(AttemptId(key, 1), "w", kind, split if kind == "map" else None)
        return dask_client.submit(run_attempt, job, "digest-test", "token-test", key, launch,
                                  expected, 0.0, *inputs, key=key, pure=False)

    child = attempt("test-map-0", "map", ())
    done, data, fp, stats = child.result()
    assert done == "done" and pickle.loads(data) == {"a": 2, "b": 1}
    assert fp == fingerprint(pickle.loads(data)) and stats["output_bytes"] == len(data)
    good = attempt("test-combine-good", "combine", (fp,), child).result()
    assert good[0] == "done" and good[2] == fp
    bad = attempt("test-combine-bad", "combine", ("0" * 64,), child).result()
    assert bad[:2] == ("fail", "nondeterministic") and fp in bad[2]


# -- keyed jobs ------------------------------------------------------------------------------

def keyed_lines(n, hot=0):
    """``n`` shards of text; with ``hot``, each shard also repeats ``"alpha"`` that often."""
    return [s + ["alpha " * hot] if hot else s for s in shards(n)]


def word_pairs(lines):
    return [(w, 1) for line in lines for w in line.split()]


def pair_count():
    """Word count whose map yields one ``(word, 1)`` per word (hot keys show per record)."""
    return ma.KeyedJob(word_pairs, lambda a, b: a + b)


def spill_dirs(client):
    """The job directories left in the Dask workers' local directories."""
    def listing(dask_worker):
        return [d for d in os.listdir(dask_worker.local_directory) if d.startswith("mergeagg-")]

    return sorted(d for ds in client.run(listing).values() for d in ds)


@pytest.mark.parametrize("knobs", [
    {"partitions": 3},
    {"partitions": 4, "combiner": False, "memory_limit": "2K"},
    {"partitions": 3, "salt": True},
], ids=["plain", "no-combiner-spills", "salted"])
def test_a_keyed_job_gives_the_serial_fingerprint(dask_client, knobs):
    data = keyed_lines(7, hot=200 if knobs.get("salt") else 0)
    job = pair_count()
    serial = ma.run(job, data, workers=0, **knobs)
    result = run_on(dask_client, job, data, **knobs)
    assert result.fingerprint == serial.fingerprint
    assert result.value == serial.value
    report = result.report
    assert report.mode == "dask" and report.counters["dask_workers"] == 2
    assert len(report.reducers) == knobs["partitions"]
    assert report.counters["shuffle_bytes_read"] == report.counters["shuffle_bytes_written"]
    if "memory_limit" in knobs:
        assert report.counters["external_merge"] >= 1
    if knobs.get("salt"):
        assert report.counters["salted_keys"] >= 1
        assert any(t.task == "merge-salted" for t in report.tasks)
    assert spill_dirs(dask_client) == []  # every worker's spill files are gone


def test_a_worker_killed_during_a_reduce_reruns_the_maps_it_held(dask_client):
    data = keyed_lines(8)
    job = ma.algorithms.wordcount(keyed=True)
    clean = ma.run(job, data, workers=0, partitions=2)
    # reduce-1's first attempt SIGKILLs its worker once it has computed its partition: the
    # map outputs on that worker's disk die with it.
    plan = FaultPlan(only={"reduce-1": {1: Fault("kill")}})
    result = run_on(dask_client, job, data, partitions=2, faults=plan, backups=False)
    assert result.fingerprint == clean.fingerprint
    report = result.report
    assert report.workers_lost >= 1
    rerun = {f.task for f in report.failures if f.cause == "output lost with worker"}
    assert any(t.startswith("map-") for t in rerun), report.failures
    attempts = {t.task: t.attempts for t in report.tasks}
    assert all(attempts[t] >= 2 for t in rerun) and attempts["reduce-1"] >= 2


def test_a_corrupt_spill_file_reruns_its_map(dask_client):
    data = keyed_lines(5)
    job = ma.algorithms.wordcount(keyed=True)
    clean = ma.run(job, data, workers=0, partitions=3)
    # map-1's first attempt flips a byte of its largest spill file on disk after writing it.
    plan = FaultPlan(only={"map-1": {1: Fault("corrupt")}})
    result = run_on(dask_client, job, data, partitions=3, faults=plan, backups=False)
    assert result.fingerprint == clean.fingerprint
    report = result.report
    assert any(f.cause == "input_lost" and "map-1" not in f.task for f in report.failures)
    assert {t.task: t.attempts for t in report.tasks}["map-1"] == 2


def test_keyed_output_parts_are_committed_once_despite_a_straggling_reducer(dask_client,
                                                                         tmp_path):
    data = keyed_lines(6)
    job = ma.algorithms.wordcount(keyed=True)
    clean = ma.run(job, data, workers=0, partitions=3)
    out = tmp_path / "counts"
    # reduce-0's first attempt sleeps 20000x its few milliseconds after committing (it
    # stops when cancelled): its backup also computes the part and finds it committed. The
    # factor is large because a reducer on a freshly restarted worker can take a second or
    # more, and the backup waits for 1.5x the median. (backup_after=0.3: with three
    # reducers on two workers, one may be queued behind the straggler.)
    plan = FaultPlan(only={"reduce-0": {1: Fault("delay", factor=20000)}})
    result = run_on(dask_client, job, data, partitions=3, output=out, faults=plan,
                    backup_after=0.3)
    assert result.fingerprint == clean.fingerprint
    assert result.value.to_dict() == clean.value
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000.jsonl", "part-00001.jsonl",
                                       "part-00002.jsonl"]
    assert {t.task: t.attempts for t in result.report.tasks}["reduce-0"] == 2, \
        str(result.report) + repr(result.report.tasks)
    assert result.report.backups_won >= 1, (result.report.failures, str(result.report))


def test_the_cli_runs_fold_keyed_and_pagerank_jobs_on_a_scheduler(dask_client, tmp_path):
    from mergeagg.cli import main

    text = tmp_path / "words.txt"
    text.write_text("\n".join(" ".join(s) for s in shards(12)) + "\n")
    address = dask_client.scheduler.address
    for extra in ([], ["--keyed", "-R", "3"]):
        out = tmp_path / f"result{len(extra)}.json"
        assert main(["run", "wordcount", str(text), "--split-size", "300", "--dask", address,
                     "--json", str(out), *extra]) == 0
        doc = json.loads(out.read_text())
        serial = ma.run(ma.algorithms.wordcount(keyed=bool(extra)), [str(text)], workers=0,
                        split_size=300, **({"partitions": 3} if extra else {}))
        assert doc["fingerprint"] == serial.fingerprint
        assert doc["report"]["mode"] == "dask"
    edges = tmp_path / "edges.txt"
    edges.write_text("a b\nb c\nc a\nc d\n")
    out = tmp_path / "ranks.json"
    assert main(["run", "pagerank", str(edges), "--dask", address, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["report"]["mode"] == "dask" and set(doc["value"]) == {"a", "b", "c", "d"}


# -- sessions and cached datasets ------------------------------------------------------------

def number_files(tmp_path, n=6, rows=40):
    paths = []
    for f in range(n):
        p = tmp_path / f"numbers{f}.txt"
        p.write_text("".join(f"{f * rows + i}\n" for i in range(rows)))
        paths.append(str(p))
    return paths


def parse_ints(lines):
    return [int(line) for line in lines]


def total():
    return ma.Aggregator(sum, lambda a, b: a + b)


def test_a_dask_session_persists_runs_and_collects_like_the_local_one(dask_client, tmp_path):
    paths = number_files(tmp_path)
    with ma.Session(workers=0) as here:
        ref_ds = here.persist(paths, load=parse_ints)
        ref = here.run(total(), ref_ds)
        ref_collect = here.collect(len, here.persist(ref_ds, load=sorted))
    with ma.Session(backend=dask_client) as session:
        assert "on Dask" in repr(session)
        ds = session.persist(paths, load=parse_ints)
        assert ds.counters["cache_misses"] == 6
        assert ds.counters["cache_bytes_read"] == sum(os.path.getsize(p) for p in paths)
        result = session.run(total(), ds)
        assert result.fingerprint == ref.fingerprint and result.value == ref.value
        assert result.report.mode == "dask"
        assert result.report.counters["cache_hits"] == 6
        assert result.report.counters["cache_bytes_read"] == 0
        derived = session.persist(ds, load=sorted)
        assert derived.counters["cache_misses"] == 6
        assert derived.counters["cache_bytes_read"] == 0  # loaded from the parent, in memory
        collected = session.collect(len, derived)
        assert collected.values == ref_collect.values
        assert collected.fingerprints == ref_collect.fingerprints
        # A plain source and a keyed job run through the session too.
        assert session.run(total(), [[1, 2], [3]]).value == 6
        keyed = session.run(pair_count(), keyed_lines(3), partitions=2)
        assert keyed.fingerprint == ma.run(pair_count(), keyed_lines(3), workers=0,
                                           partitions=2).fingerprint
        session.unpersist(derived)
        released(dask_client, f"mergeagg-{derived.id}-")
        assert held(dask_client, f"mergeagg-{ds.id}-")  # its parent is still kept
    # Closing the session released every partition it held in the cluster.
    released(dask_client, "mergeagg-ds")


def held(client, prefix):
    return [k for k in client.futures if str(k).startswith(prefix)]


def released(client, prefix):
    """Wait until the client holds no key starting with ``prefix`` (Dask drops a released
    key on its event loop, a moment later)."""
    deadline = time.monotonic() + 10
    while held(client, prefix) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not held(client, prefix)


def test_a_killed_worker_s_cached_partitions_are_rebuilt_from_lineage(dask_client, tmp_path):
    paths = number_files(tmp_path)
    with ma.Session(backend=dask_client, backups=False) as session:
        ds = session.persist(paths, load=parse_ints)
        clean = session.run(total(), ds)
        # map-1's first attempt SIGKILLs its worker after its partial: the partitions that
        # worker held are gone, and Dask reloads them from their splits.
        plan = FaultPlan(only={"map-1": {1: Fault("kill")}})
        hurt = session.run(total(), ds, faults=plan)
        assert hurt.fingerprint == clean.fingerprint
        counters = hurt.report.counters
        assert hurt.report.workers_lost >= 1
        assert counters["cache_hits"] + counters["cache_rebuilds"] == 6
        dask_client.wait_for_workers(2, timeout=60)
        again = session.run(total(), ds)
        assert again.fingerprint == clean.fingerprint
        # A rebuild is counted by the first job that reads the rebuilt partition: this
        # one, or (when every task that read the dead worker's partitions had completed
        # before it died) the next.
        rebuilds = counters["cache_rebuilds"] + again.report.counters["cache_rebuilds"]
        rebuilt_bytes = counters["cache_bytes_read"] + again.report.counters["cache_bytes_read"]
        assert rebuilds >= 1 and rebuilt_bytes > 0
        third = session.run(total(), ds)  # the rebuilt partitions stay cached
        assert third.fingerprint == clean.fingerprint
        assert third.report.counters["cache_hits"] == 6


def test_pagerank_runs_on_a_dask_session_with_the_local_bytes(dask_client):
    nx = pytest.importorskip("networkx")
    from mergeagg.algorithms.pagerank import pagerank

    g = nx.gnm_random_graph(200, 1200, seed=3, directed=True)
    with ma.Session(workers=0) as here:
        ref = pagerank(g, mode="cached", session=here)
    with ma.Session(backend=dask_client) as session:
        cached = pagerank(g, mode="cached", session=session)
        disk = pagerank(g, mode="disk", session=session)
    assert cached.vector.tobytes() == ref.vector.tobytes() == disk.vector.tobytes()
    assert cached.iterations == ref.iterations


def test_a_failing_load_on_dask_names_its_error_and_drops_the_dataset(dask_client, tmp_path):
    def broken(lines):
        raise ValueError("load broke")

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    with ma.Session(backend=dask_client, max_attempts=2) as session:
        with pytest.raises(TaskFailed, match="ValueError: load broke") as info:
            session.persist([["a"], ["b"]], load=broken)
        assert "load broke" in info.value.traceback
        with pytest.raises(ma.errors.InputError, match="bad.txt.*UTF-8"):
            session.persist([str(bad)], load=list)
        assert session.datasets == {}


def test_a_cluster_left_without_workers_ends_the_job_by_name_instead_of_waiting_for_ever():
    from mergeagg.errors import WorkerLost
    from mergeagg.runtime.dask import DaskExecutor

    class NoWorkers:  # a scheduler whose workers are all gone (nannies that gave up)
        class scheduler:
            address = "tcp://10.0.0.1:8786"

        workers = {"tcp://10.0.0.2:1234": {"nthreads": 1, "status": "running"}}

        def scheduler_info(self, n_workers=-1):
            return {"workers": self.workers}

    client = NoWorkers()
    ex = DaskExecutor(client, wait_for_workers=0.2)
    assert [type(e).__name__ for e in ex.membership(force=True)] == ["Joined", "Heartbeat"]
    client.workers = {}
    lost = ex.membership(force=True)
    assert [type(e).__name__ for e in lost] == ["Lost"]  # the policy hears it first
    assert ex.membership(force=True) == []  # and waits a while for workers to come back
    time.sleep(0.25)
    with pytest.raises(WorkerLost, match=r"tcp://10.0.0.1:8786 has had no worker for"):
        ex.membership(force=True)
    client.workers = {"tcp://10.0.0.3:1": {"nthreads": 1, "status": "running"}}
    ex = DaskExecutor(client, wait_for_workers=0.2)
    ex.membership(force=True)
    client.workers = {}
    ex.membership(force=True)
    client.workers = {"tcp://10.0.0.4:1": {"nthreads": 1, "status": "running"}}
    time.sleep(0.25)
    assert any(type(e).__name__ == "Joined" for e in ex.membership(force=True))  # back


def identity_after(x, _y=None):
    return x


def test_an_attempt_waiting_on_an_input_dask_cannot_recompute_is_reported_not_waited_on(
        dask_client):
    # What the Debian doc tree under kill faults showed: a combine waited for ever on a map
    # output that Dask had dropped and would recompute, restricted to a worker that left.
    from mergeagg.runtime.dask import DaskExecutor
    from mergeagg.runtime.port import Failed

    live = sorted(dask_client.scheduler_info()["workers"])[0]
    ex = DaskExecutor(dask_client, stuck_after=0.0)
    ex.token = "stuck0test"
    gone = ex.client.submit(identity_after, 1, key="mergeagg-stuck0test-map-3#2",
                            workers=["tcp://127.0.0.1:9"], allow_other_workers=False,
                            pure=False)
    waiting = ex.client.submit(identity_after, gone, key="mergeagg-stuck0test-combine-1-0#1",
                               workers=[live], allow_other_workers=False, pure=False)
    for aid, fut, kind, worker in (("map-3#2", gone, "map", "tcp://127.0.0.1:9/0"),
                                   ("combine-1-0#1", waiting, "combine", f"{live}/0")):
        task, number = aid.split("#")
        ex.futures[aid] = fut
        ex.where[aid] = worker.rsplit("/", 1)[0]
        ex._launched[aid] = Launch(AttemptId(task, int(number)), worker, kind)
    try:
        deadline = time.monotonic() + 20
        events = []
        while len(events) < 2 and time.monotonic() < deadline:
            # Only the workers' heartbeats arrive: quiet, as far as attempts go. (The
            # scheduler may see the combine wait a moment after the map is no-worker.)
            events += [e for e in ex.events(0.3) if isinstance(e, Failed)]
        by_task = {e.attempt.task: e for e in events}
        assert set(by_task) == {"map-3", "combine-1-0"}
        assert all(isinstance(e, Failed) and e.kind == "input_lost" for e in events)
        assert by_task["combine-1-0"].lost == ("map-3",)  # the input the policy re-runs
        assert "would wait for ever for a worker that left" in by_task["combine-1-0"].error
        assert ex._unstick() == []  # each is reported once
    finally:
        gone.release()
        waiting.release()
