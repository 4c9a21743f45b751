"""``mergeagg master``: the failure detector as a JSON-lines node on stdin/stdout.

One JSON object per line in Maelstrom-style envelopes ``{"src", "dest", "body"}``. Every
reply goes from ``master`` back to the sender with ``in_reply_to`` set to the request's
``msg_id``. Requests (``body.type``):

* ``heartbeat`` ``{worker_id, timestamp}`` → ``heartbeat_ok``;
* ``check_failures`` ``{timeout_ms, now}`` → ``failures_detected`` with ``failed_workers``,
  the sorted workers whose ``now - last_heartbeat > timeout_ms``. A failed worker stays
  failed until it sends a heartbeat again;
* ``reassign`` ``{failed_worker, healthy_worker, tasks: [{id, ...}]}`` → ``reassigned``
  with ``reassigned_tasks``; the node's task table then has those tasks on the healthy
  worker (a reassign does not revive the failed worker).

Malformed JSON or a missing field gets ``{"type": "error", "code": 12, "text": ...}``
(with ``in_reply_to`` when a ``msg_id`` could be read), an unknown type code 10; the node
keeps serving. It uses :class:`mergeagg.runtime.master.FailureDetector`, the runtime's own.

>>> node = MasterNode()
>>> node.handle_line('{"src": "w1", "dest": "master", "body": {"type": "heartbeat", '
...                  '"msg_id": 1, "worker_id": "w1", "timestamp": 5}}')
'{"src": "master", "dest": "w1", "body": {"type": "heartbeat_ok", "in_reply_to": 1}}'
"""

from __future__ import annotations

import json
import sys

from mergeagg.runtime.master import FailureDetector

__all__ = ["MasterNode", "serve"]

MALFORMED = 12
NOT_SUPPORTED = 10


class _Malformed(Exception):
    pass


def _field(body, name, kinds):
    if name not in body:
        raise _Malformed(f"missing field {name!r} in {body.get('type')!r} request")
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _Malformed(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


class MasterNode:
    """The JSON-lines failure-detector node; :meth:`handle_line` answers one line.

    ``tasks`` maps task id to ``{"worker": ..., "task": {...}}``.
    """

    def __init__(self, node_id="master"):
        self.node_id = node_id
        self.detector = FailureDetector()
        self.tasks = {}

    def _reply(self, dest, body):
        return json.dumps({"src": self.node_id, "dest": dest, "body": body})

    def handle_line(self, line):
        """The reply (a JSON line without newline) to one input line, or ``None`` for a
        blank line."""
        if not line.strip():
            return None
        try:
            msg = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return self._reply(None, {"type": "error", "code": MALFORMED,
                                      "text": f"malformed JSON: {exc}"})
        src = msg.get("src") if isinstance(msg, dict) else None
        body = msg.get("body") if isinstance(msg, dict) else None
        msg_id = body.get("msg_id") if isinstance(body, dict) else None
        if isinstance(msg_id, bool) or not isinstance(msg_id, (int, str, type(None))):
            msg_id = None

        def error(code, text):
            out = {"type": "error", "code": code, "text": text}
            if msg_id is not None:
                out = {"type": "error", "in_reply_to": msg_id, "code": code, "text": text}
            return self._reply(src if isinstance(src, str) else None, out)

        if not isinstance(msg, dict) or not isinstance(body, dict):
            return error(MALFORMED, "expected an envelope {src, dest, body} with an object body")
        if not isinstance(src, str):
            return error(MALFORMED, "missing or non-string field 'src'")
        kind = body.get("type")
        try:
            if kind == "heartbeat":
                reply = self._heartbeat(body)
            elif kind == "check_failures":
                reply = self._check(body)
            elif kind == "reassign":
                reply = self._reassign(body)
            elif not isinstance(kind, str):
                raise _Malformed("missing or non-string field 'type'")
            else:
                return error(NOT_SUPPORTED, f"unsupported message type {kind!r}")
        except _Malformed as exc:
            return error(MALFORMED, str(exc))
        if msg_id is None:
            return error(MALFORMED, f"missing field 'msg_id' in {kind!r} request")
        reply = {"type": reply.pop("type"), "in_reply_to": msg_id, **reply}
        return self._reply(src, reply)

    def _heartbeat(self, body):
        worker = _field(body, "worker_id", str)
        ts = _field(body, "timestamp", (int, float))
        _field(body, "msg_id", (int, str))
        self.detector.heartbeat(worker, ts)
        return {"type": "heartbeat_ok"}

    def _check(self, body):
        timeout = _field(body, "timeout_ms", (int, float))
        now = _field(body, "now", (int, float))
        _field(body, "msg_id", (int, str))
        return {"type": "failures_detected", "failed_workers": self.detector.failed(now, timeout)}

    def _reassign(self, body):
        failed = _field(body, "failed_worker", str)
        healthy = _field(body, "healthy_worker", str)
        tasks = _field(body, "tasks", list)
        _field(body, "msg_id", (int, str))
        ids = []
        for i, task in enumerate(tasks):
            if not isinstance(task, dict) or "id" not in task:
                raise _Malformed(f"task {i} of 'tasks' has no 'id'")
            tid = task["id"]
            if isinstance(tid, bool) or not isinstance(tid, (str, int)):
                raise _Malformed(f"task {i} of 'tasks' has a non-string id")
            ids.append(tid)
        for tid, task in zip(ids, tasks):
            self.tasks[tid] = {"worker": healthy, "from": failed, "task": task}
        return {"type": "reassigned", "reassigned_tasks": ids}


def serve(stdin=None, stdout=None):
    """Answer JSON lines from ``stdin`` on ``stdout`` until end of input. Returns 0."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    node = MasterNode()
    for line in stdin:
        reply = node.handle_line(line)
        if reply is not None:
            stdout.write(reply + "\n")
            stdout.flush()
    return 0
