"""Poison messages pushed straight onto the Redis lists of the control plane's queues, against a real
`celery -A tasks worker` process: the worker survives each of them, sets each aside once in the
dead-letter list (counted, shown by `fleet status`), logs none of their payloads, changes no
fleet state, and a restarted worker is not killed by anything left behind."""

from __future__ import annotations

import base64
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.deadletters import dead_letter_key
from fleet.testing.plane import Plane, plane
from tests.conftest import wait_for

MARK = "POISON-" + uuid.uuid4().hex  # in every payload: it must never reach a log


def envelope(**change: Any) -> bytes:
    """A Celery protocol-2 envelope of `fleet.status("one")`, with fields replaced or removed (None)."""
    body = base64.b64encode(json.dumps([["one"], {}, {"callbacks": None}]).encode()).decode()
    env: dict[str, Any] = {
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"task": "fleet.status", "id": str(uuid.uuid4()), "lang": "py", "argsrepr": MARK},
        "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64", "correlation_id": MARK,
                       "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0},
    }
    for key, value in change.items():
        key = key.replace("_", "-") if key.startswith("content") else key
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return json.dumps(env).encode()


def b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


CASES: dict[str, bytes] = {
    "not JSON": b"\xff\xfe not json " + MARK.encode(),
    "a JSON list": json.dumps([1, 2, MARK]).encode(),
    "a JSON object that is no envelope": json.dumps({"mark": MARK}).encode(),
    "a body that is not base64": envelope(body="%%%" + MARK + "%%%"),
    "headers that are a string": envelope(headers=MARK),
    "no headers": envelope(headers=None),
    "headers without a task id": envelope(headers={"task": "fleet.status", "argsrepr": MARK}),
    "an unknown task": envelope(headers={"task": "fleet.nope", "id": str(uuid.uuid4()), "argsrepr": MARK}),
    "a pickle content type": envelope(content_type="application/x-python-serialize"),
    "a body of the wrong shape": envelope(body=b64(MARK)),
    "no properties": envelope(properties=None),
    "properties without a delivery tag": envelope(properties={"body_encoding": "base64", "mark": MARK}),
}


@pytest.fixture
def poisoned(tmp_path: Path) -> Iterator[Plane]:
    # no beat: nothing but the poison and our status calls may touch the fleet's keys
    with plane(tmp_path, """
        [clusters.one]
        provider = "memory"
        max_workers = 4
        [clusters.one.container]
        command = ["worker"]
    """, beat=False, persist=False) as p:
        yield p


def status(p: Plane) -> dict[str, Any]:
    return dict(p.call("fleet.status", "one"))


def test_poison_on_every_queue_is_set_aside_and_no_worker_dies(poisoned: Plane,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    stack, r, log_path, fid = poisoned.stack, poisoned.r, poisoned.log, poisoned.fleet_id
    queues = ["celery", f"fleet.{fid}", f"fleet.{fid}.provider.memory"]
    assert status(poisoned)["cluster"] == "one"

    def fleet_keys() -> dict[bytes, Any]:  # every key of the fleet but what poison may change
        skip = {dead_letter_key(fid).encode(), f"fleet:{fid}:metrics".encode()}
        return {k: r.dump(k) for k in r.scan_iter(f"fleet:{fid}:*") if k not in skip}

    before = fleet_keys()
    for queue in queues:
        for raw in CASES.values():
            r.lpush(queue, raw)
    wait_for(lambda: not any(r.llen(q) for q in queues), timeout=30, what="the queues to drain")
    expected = len(CASES) * len(queues)
    wait_for(lambda: r.llen(dead_letter_key(fid)) >= expected, timeout=30, what="every poison message set aside")
    time.sleep(1.0)
    assert stack.check() == []  # the worker is alive
    assert status(poisoned)["cluster"] == "one"  # and serving
    entries = [json.loads(e) for e in r.lrange(dead_letter_key(fid), 0, -1)]
    assert len(entries) == expected  # each one once
    assert all(MARK in e["payload"] for e in entries) and {e["queue"] for e in entries} == set(queues)
    reasons = {e["reason"].split(":")[0] for e in entries}
    assert {"undecodable", "malformed", "unknown_task", "invalid_task"} <= reasons, reasons
    assert not [v for v in r.hvals("unacked") if MARK.encode() in v]  # nothing comes back
    assert fleet_keys() == before  # no fleet state changed
    counted = {k.decode(): int(v) for k, v in r.hgetall(f"fleet:{fid}:metrics").items()
               if k.startswith(b"dead_letters|")}
    assert sum(counted.values()) == expected
    assert MARK not in log_path.read_text(errors="replace")  # logged without the payload

    monkeypatch.setenv("FLEET_CONFIG", str(stack.config_path))
    monkeypatch.setenv("FLEET_REDIS_URL", stack.url)
    shown = CliRunner().invoke(main, ["status"])
    assert shown.exit_code == 0, shown.output
    assert f"{expected} message(s) on the control plane's queues could not be processed" in shown.output

    # a restarted worker finds nothing left that kills it, and serves
    stack.kill("worker", signal.SIGTERM)
    stack.start_role("worker")
    assert status(poisoned)["cluster"] == "one"
    time.sleep(2.0)
    assert stack.check() == []
    assert r.llen(dead_letter_key(fid)) == expected
    assert MARK not in log_path.read_text(errors="replace")


def test_a_poison_message_left_unacked_does_not_kill_the_next_worker(poisoned: Plane) -> None:
    """What a worker that died holding a poison message leaves behind (an entry in the unacked
    hash) is restored to the queue by the next worker; it too is set aside, not fatal."""
    stack, r, fid = poisoned.stack, poisoned.r, poisoned.fleet_id
    stack.kill("worker", signal.SIGTERM)
    raw = CASES["a body that is not base64"]
    tag = json.loads(raw)["properties"]["delivery_tag"]
    r.hset("unacked", tag, json.dumps([json.loads(raw), "", "celery"]))
    r.zadd("unacked_index", {tag: time.time() - 7200})  # older than the visibility timeout
    stack.start_role("worker")
    wait_for(lambda: r.llen(dead_letter_key(fid)) >= 1 and not r.hexists("unacked", tag), timeout=60,
             what="the restored poison set aside")
    assert status(poisoned)["cluster"] == "one"
    time.sleep(1.0)
    assert stack.check() == []
