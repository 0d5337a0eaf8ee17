"""What a cluster's Celery workers are doing, and what follows from it: how busy each handle is
(the planner kills idle ones first), drains that end (a draining handle whose workers hold
nothing, or whose time is up, is killed), and the autoscaler's decision with its memory.

A draining handle is killed only when its workers answered that they hold nothing, when its
drain deadline passed, or (through the provider's status, in the sweep's passive step) when its
process is gone: a worker that misses an answer (busy on a loaded host, stopped) is never taken
for idle.

Only clusters with `queues` have any of this. The probe talks to the workers' broker
(`broker_url`, default the fleet's Redis; RabbitMQ's management API too, when the cluster has
`broker_management_url`: then the load counts the broker's unacknowledged messages, never less
than the workers said they hold), never to the provider. A broker that cannot be
reached skips this step for the sweep (drain deadlines still apply), with a warning: it never
fails the sweep.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from fleet import autoscale
from fleet.amqp_management import Depth
from fleet.config import ClusterSpec, FleetConfig
from fleet.control.api import validate_handles
from fleet.control.dispatcher import Dispatcher, kill_by_pool
from fleet.control.reconciler import target
from fleet.model import LIVE, ClusterState, EventKind, HandleStatus, LaunchState
from fleet.probe import Activity, Probe
from fleet.store import Store

log = logging.getLogger(__name__)


class CeleryWatch:
    def __init__(self, config: FleetConfig, store: Store, dispatcher: Dispatcher, url: str,
                 probe: Callable[..., Probe] = Probe) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        self.url = url
        self._make_probe = probe
        self._probes: dict[str, Probe] = {}
        self._lock = threading.Lock()

    def probe(self, spec: ClusterSpec) -> Probe:
        """One probe per broker URL, shared by this process's threads."""
        url = spec.broker_url or self.url
        key = f"{url} {spec.broker_management_url or ''}"
        with self._lock:
            if key not in self._probes:
                self._probes[key] = self._make_probe(url, spec.broker_management_url, settings=self.config.fleet)
            return self._probes[key]

    def watch(self, cluster: str, spec: ClusterSpec, st: ClusterState, now: float) -> dict[str, Any]:
        """Ask the cluster's workers what they hold; finish drains; autoscale from the load."""
        try:
            probe = self.probe(spec)
            activity = probe.activity([h for h, r in st.handles.items() if r.status is not HandleStatus.STOPPING])
            depth = probe.depth(spec.queues) if spec.autoscale else Depth(0)
        except Exception as exc:  # noqa: BLE001 - the workers' broker may be down: skip, never crash the sweep
            log.warning("cannot probe the workers of %s: %s", cluster, exc)
            self._finish_drains(cluster, spec, st, None, now)  # deadlines hold all the same
            return {"probe_failed": type(exc).__name__}
        # A worker that did not answer in time (busy, stopped, or its broker slow) keeps what it
        # held at the last sweep that heard from it: counted as idle, one late answer would make
        # the autoscaler scale down and then up again. A worker never heard from holds 0.
        held = {h: activity.of(h) if h in activity.hostnames or r.status is HandleStatus.STOPPING else r.busy
                for h, r in st.handles.items()}
        self.store.set_busy(cluster, held)
        if spec.idle_timeout:  # since when each is idle: the longest idle go first on a scale-down
            self.store.set_idle(cluster, {h: (None if held[h] else (r.idle_since or now))
                                          for h, r in st.handles.items() if r.status in LIVE})
        done = self._finish_drains(cluster, spec, st, activity, now)
        # what draining workers still hold needs no capacity: they finish it and go
        busy = sum(held[h] for h, r in st.handles.items() if r.status in LIVE)
        report: dict[str, Any] = {"busy": busy, "drained": len(done)}
        if spec.autoscale:
            unacked = busy
            if depth.unacked is not None:  # the broker's count also covers workers that did not answer
                leaving = sum(held[h] for h, r in st.handles.items() if r.status not in LIVE)
                unacked = max(busy, depth.unacked - leaving)
            report.update(self._autoscale(cluster, spec, st, depth.ready + unacked, now))
        return report

    def _finish_drains(self, cluster: str, spec: ClusterSpec, st: ClusterState, activity: Activity | None,
                       now: float) -> list[str]:
        """Kill the draining handles whose drain is over, and return them. A drain is over when
        every worker of the handle that answered holds nothing (an interrupted one also waits
        for its replacement), or at its deadline (`drain_until`). A handle none of whose workers
        answered (`activity` None: nobody could be asked) is NOT idle: it may be busy on a
        loaded host or stopped, so it waits for an answer or its deadline; one whose process is
        gone leaves through the provider's status (the passive step), not through here."""
        draining = [(h, r) for h, r in st.handles.items() if r.status is HandleStatus.DRAINING]
        if not draining:
            return []
        # an interrupted worker that holds nothing waits for its replacement to be launched (or
        # for its deadline): it can still serve, and it never leaves before what replaces it
        live = sum(r.workers for r in st.handles.values() if r.status in LIVE) + sum(
            p.count for p in st.pending.values() if p.state is not LaunchState.CANCELLED)
        replaced = live >= target(spec, st.desired)
        idle = [h for h, r in draining if activity is not None and h in activity.hostnames
                and activity.of(h) == 0 and (replaced or not r.interrupted)]
        late = [h for h, r in draining if h not in idle and now >= float(r.drain_until or 0)]
        done = self.store.transition(cluster, idle, [HandleStatus.DRAINING], HandleStatus.STOPPING,
                                     EventKind.DRAINED) if idle else []
        done += self.store.transition(cluster, late, [HandleStatus.DRAINING], HandleStatus.STOPPING,
                                      EventKind.DRAIN_TIMEOUT) if late else []
        if done:
            kill_by_pool(self.dispatcher, spec, cluster, {h: st.handles[h].pool for h in done})
        return done

    def _autoscale(self, cluster: str, spec: ClusterSpec, st: ClusterState, load: int, now: float) -> dict[str, Any]:
        assert spec.autoscale is not None
        raw = self.store.autoscale_memory(cluster)
        memory = autoscale.Memory(**raw) if raw else autoscale.Memory()
        current = target(spec, st.desired)
        floor = st.desired.floor if st.desired else 0
        decision = autoscale.decide(
            load=load, current=current, floor=floor, min_workers=spec.min_workers, max_workers=spec.max_workers,
            tasks_per_worker=spec.autoscale.tasks_per_worker, scale_down_delay=spec.autoscale.scale_down_delay,
            agreeing_sweeps=spec.autoscale.agreeing_sweeps, memory=memory, now=now)
        self.store.set_autoscale_memory(cluster, asdict(decision.memory))
        if decision.desired is not None and decision.desired != current:
            self.store.set_desired(cluster, decision.desired, floor=floor, source=f"autoscale load={load}")
        return {"load": load, "wanted": decision.wanted}

    def start_drain(self, cluster: str, handles: Sequence[str]) -> dict[str, Any]:
        """Tell the workers of draining handles to stop consuming (the sweep kills them once idle).
        Sent to their hostname pattern, not to those that answer an inspect: a worker busy or
        stopped right now gets it when it reads its broker again."""
        spec = self.config.spec(cluster)
        unique = validate_handles(handles)
        # only those still draining: a drain called off meanwhile (fleet.retire) must not resume
        unique = [h for h, r in self.store.records(cluster, unique).items() if r.status is HandleStatus.DRAINING]
        if unique:
            self.probe(spec).stop_consuming(spec.queues, unique)
        return {"handles": len(unique)}
