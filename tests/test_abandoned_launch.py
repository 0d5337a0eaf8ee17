"""A launch whose run task claimed it and then vanished without an answer (its Redis failed over
under it: the task's writes, its answer and its ack were lost) is sent again by the next sweep
once no lease is held for it, not after `launch_timeout` (300 s by default). A launch whose run
task still holds its lease is left alone. Real Redis, the memory provider, inline tasks."""

from __future__ import annotations

from typing import Any

from fleet.lease import Lease
from fleet.store import Claim, ClaimState
from tests.conftest import inline, work

CLUSTER = {"c": {"provider": "memory", "max_workers": 4, "container": {"command": ["w"]}}}


def _claimed_long_ago(m: Any, d: Any) -> str:
    """Scale to 3 and let the run task claim its launch a minute ago, then vanish."""
    m.api.scale("c", 3)
    while d.jobs[0][0] != "run":
        d.do(*d.jobs.popleft())
    _, (_, launch_id) = d.jobs.popleft()  # taken by a worker that then dies
    reply = m.store._scripts["claim"](keys=[m.store.of("c").pending], args=[launch_id, m.store.now() - 60])
    assert Claim.from_reply(reply).state is ClaimState.CLAIMED
    assert not [j for j in d.jobs if j[0] == "run"]
    return str(launch_id)


def test_a_claimed_launch_with_no_lease_is_sent_again_at_once(fid: str) -> None:
    m, d = inline(fid, CLUSTER)
    launch_id = _claimed_long_ago(m, d)
    m.sweeper.sweep_cluster("c")
    assert ("run", ("c", launch_id)) in d.jobs  # well inside launch_timeout
    work(d)
    status = m.api.status("c")
    assert (status["running"] + status["initializing"], status["pending"]) == (3, 0), status


def test_a_claimed_launch_whose_lease_is_held_waits(fid: str) -> None:
    m, d = inline(fid, CLUSTER)
    launch_id = _claimed_long_ago(m, d)
    lease = Lease(m.store.r, m.store.of("c").launch(launch_id), 30)
    assert lease.acquire()
    try:
        m.sweeper.sweep_cluster("c")
        assert ("run", ("c", launch_id)) not in d.jobs  # its run task is alive: no second one
    finally:
        lease.release()


def test_a_claimed_launch_whose_run_task_waits_to_retry_is_not_sent_again(fid: str) -> None:
    m, d = inline(fid, CLUSTER)
    launch_id = _claimed_long_ago(m, d)
    m.launcher.retrying("c", launch_id, 30)  # what fleet.run says before its back-off
    m.sweeper.sweep_cluster("c")
    assert ("run", ("c", launch_id)) not in d.jobs  # the back-off is kept
    m.store.r.delete(m.store.of("c").launch_retry(launch_id))  # the retry never came
    m.sweeper.sweep_cluster("c")
    assert ("run", ("c", launch_id)) in d.jobs
