"""The ``mergeagg master`` JSON-lines node."""

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from mergeagg.runtime.protocol import MasterNode, serve


def env(src, body):
    return json.dumps({"src": src, "dest": "master", "body": body})


def ask(node, src, body):
    return json.loads(node.handle_line(env(src, body)))


def test_the_sequence_exactly():
    node = MasterNode()
    r = ask(node, "w1", {"type": "heartbeat", "msg_id": 1, "worker_id": "w1",
                         "timestamp": 1700000000000})
    assert r == {"src": "master", "dest": "w1",
                 "body": {"type": "heartbeat_ok", "in_reply_to": 1}}
    r = ask(node, "monitor", {"type": "check_failures", "msg_id": 2, "timeout_ms": 5000,
                              "now": 1700000010000})
    assert r == {"src": "master", "dest": "monitor",
                 "body": {"type": "failures_detected", "in_reply_to": 2,
                          "failed_workers": ["w1"]}}
    r = ask(node, "monitor", {"type": "reassign", "msg_id": 3, "failed_worker": "w1",
                              "healthy_worker": "w3",
                              "tasks": [{"id": "t1", "chunk": ["hello world"]}]})
    assert r == {"src": "master", "dest": "monitor",
                 "body": {"type": "reassigned", "in_reply_to": 3, "reassigned_tasks": ["t1"]}}
    assert node.tasks["t1"]["worker"] == "w3"


def test_healthy_worker_and_revival():
    node = MasterNode()
    ask(node, "w1", {"type": "heartbeat", "msg_id": 1, "worker_id": "w1", "timestamp": 0})
    ask(node, "w2", {"type": "heartbeat", "msg_id": 2, "worker_id": "w2", "timestamp": 9000})
    check = {"type": "check_failures", "msg_id": 3, "timeout_ms": 5000, "now": 10000}
    assert ask(node, "m", check)["body"]["failed_workers"] == ["w1"]
    # A reassign moves tasks but does not revive w1.
    ask(node, "m", {"type": "reassign", "msg_id": 4, "failed_worker": "w1",
                    "healthy_worker": "w2", "tasks": [{"id": "t9"}]})
    assert ask(node, "m", {**check, "msg_id": 5})["body"]["failed_workers"] == ["w1"]
    # A heartbeat does.
    ask(node, "w1", {"type": "heartbeat", "msg_id": 6, "worker_id": "w1", "timestamp": 10000})
    assert ask(node, "m", {**check, "msg_id": 7})["body"]["failed_workers"] == []
    # Exactly at the timeout is not failed: the rule is now - last > timeout.
    assert ask(node, "m", {**check, "msg_id": 8, "now": 14000})["body"]["failed_workers"] == []


def test_errors():
    node = MasterNode()
    r = json.loads(node.handle_line("{not json"))
    assert r["body"]["type"] == "error" and r["body"]["code"] == 12
    r = ask(node, "w1", {"type": "heartbeat", "msg_id": 4, "worker_id": "w1"})
    assert r["body"] == {"type": "error", "in_reply_to": 4, "code": 12,
                         "text": "missing field 'timestamp' in 'heartbeat' request"}
    r = ask(node, "w1", {"type": "dance", "msg_id": 5})
    assert r["body"]["code"] == 10 and r["body"]["in_reply_to"] == 5


def test_serve_keeps_serving_after_garbage():
    lines = ["garbage\n", env("w1", {"type": "heartbeat", "msg_id": 1, "worker_id": "w1",
                                     "timestamp": 1}) + "\n", "\n", "[1, 2]\n"]
    out = io.StringIO()
    assert serve(io.StringIO("".join(lines)), out) == 0
    replies = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["body"]["type"] for r in replies] == ["error", "heartbeat_ok", "error"]


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(
                                ["src", "dest", "body", "type", "msg_id", "worker_id",
                                 "timestamp", "timeout_ms", "now", "tasks", "failed_worker",
                                 "healthy_worker", "id"]), inner, max_size=6)),
    max_leaves=15,
)


@given(st.lists(st.one_of(st.text(max_size=40), json_values.map(json.dumps)), max_size=20))
def test_garbage_never_crashes_the_node(lines):
    node = MasterNode()
    for line in lines:
        if "\n" in line:
            continue
        reply = node.handle_line(line)
        if reply is not None:
            doc = json.loads(reply)
            assert doc["src"] == "master" and "type" in doc["body"]
