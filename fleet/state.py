"""Fleet's shared state in Redis, all keys under `fleet:{fleet_id}:{cluster}:`.

| key        | type   | holds                                                                 |
|------------|--------|-----------------------------------------------------------------------|
| `desired`  | hash   | `n` (desired workers), `version` (only grows), `at`                   |
| `handles`  | hash   | handle -> JSON {w: workers, s: status, since, launch, kills, kill_at, |
|            |        | req (launch request time, until running), hold, drain_until, busy}    |
| `pending`  | hash   | launch_id -> JSON {count, state: queued|running|cancelled, at, claimed}|
| `events`   | stream | launched / killed / stopped / cancelled / error ..., capped           |
| `lock`     | string | the reconcile lock (redis-py Lock)                                    |
| `queued`   | string | set while a reconcile task is queued (coalesces bursts)               |
| `sweeping` | string | the sweep lock (one sweep per cluster at a time; expires after 60 s)  |

Every change that touches more than one key, or reads before it writes, is one Lua script or one
WATCH/MULTI transaction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import redis

from fleet.metrics import LUA_HELPERS, metrics_key, record_event
from fleet.planner import HandleView, PendingView

EVENTS_MAXLEN = 1000

# A launch cancelled before any run task took it is dropped; one cancelled after a run task took it
# may have made workers (the answer lost, the task retried or died), so it is 'settle': the run
# task asks the provider what the launch made and kills that before the entry goes.
_CLAIM = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'missing', 0} end
local p = cjson.decode(raw)
if p.state == 'cancelled' then
  if p.claimed then
    p.claimed = tonumber(ARGV[2])  -- the sweep re-sends it launch_timeout after this attempt
    redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(p))
    return {'settle', p.count}
  end
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {'cancelled', 0}
end
p.state = 'running'
p.claimed = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(p))
return {'claimed', p.count}
"""

# Every script that writes events starts with this: KEYS[1] the cluster's event stream, KEYS[2]
# the fleet's metrics hash; ARGV[1] the cluster, ARGV[2] the stream's cap, ARGV[3] the time.
# emit() appends an event and counts it (fleet_events_total and friends, see fleet.metrics).
_PRELUDE = LUA_HELPERS + """
local EVENTS, METRICS, CLUSTER, MAXLEN, now = KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3])
local function emit(kind, ...)
  redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'kind', kind, ...)
  count_event(METRICS, CLUSTER, kind)
end
"""

# KEYS[3] pending, KEYS[4] handles; ARGV[4] launch id, then handle, workers pairs.
_RECORD = _PRELUDE + """
local raw = redis.call('HGET', KEYS[3], ARGV[4])
local state, req = 'missing', now
if raw then
  local p = cjson.decode(raw)
  state, req = p.state, p.at or now
end
redis.call('HDEL', KEYS[3], ARGV[4])
local status = 'initializing'
if state == 'cancelled' then status = 'stopping' end
local added = 0
for i = 5, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[4], ARGV[i]) == 0 then
    local w = tonumber(ARGV[i + 1])
    redis.call('HSET', KEYS[4], ARGV[i], cjson.encode({w = w, s = status, since = now, launch = ARGV[4], kills = 0,
      req = req}))
    added = added + w
  end
end
emit('launched', 'launch', ARGV[4], 'workers', tostring(added), 'state', state)
return state
"""

# KEYS[3] handles, KEYS[4] cleanup; ARGV[4] listing grace, ARGV[5] first cleanup retry (s), then
# handle, status pairs. A dead handle (and a stopping one whose last kill failed) leaves the handles
# and enters `cleanup`, from which the sweep re-sends its kill until one succeeds.
_STATUS = _PRELUDE + """
local grace, retry = tonumber(ARGV[4]), tonumber(ARGV[5])
local pruned, changed, gone = 0, 0, 0
local dead = {}
local function clean_up(h, w)
  redis.call('HSET', KEYS[4], h, cjson.encode({w = w, tries = 0, next = now + retry}))
  table.insert(dead, h)
end
for i = 6, #ARGV, 2 do
  local h, s = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', KEYS[3], h)
  if raw then
    local r = cjson.decode(raw)
    if s == 'stopped' then
      if r.s == 'stopping' then
        redis.call('HDEL', KEYS[3], h)
        emit('killed', 'handle', h, 'workers', tostring(r.w))
        changed = changed + 1
        gone = gone + 1
        if r.kfail then clean_up(h, r.w) end
      elseif not (r.s == 'initializing' and now - r.since < grace) then
        redis.call('HDEL', KEYS[3], h)
        emit('stopped', 'handle', h, 'workers', tostring(r.w), 'was', r.s)
        pruned = pruned + r.w
        changed = changed + 1
        gone = gone + 1
        clean_up(h, r.w)
      end
    else
      -- written only on a change: a steady sweep leaves the hash alone, so it never makes a
      -- reconcile's WATCH on it fail (with 10,000 handles that retried a scale-down for seconds)
      if r.s ~= 'stopping' and r.s ~= 'draining' and r.s ~= s then
        if s == 'running' then
          emit('running', 'handle', h, 'workers', tostring(r.w))
          if r.req then record_ready(METRICS, CLUSTER, now - r.req, r.w) r.req = nil end
        end
        r.s = s
        r.since = now
        changed = changed + 1
        redis.call('HSET', KEYS[3], h, cjson.encode(r))
      end
    end
  end
end
return {pruned, changed, gone, dead}
"""

# KEYS[3] handles, KEYS[4] cleanup; ARGV[4] first cleanup retry (s), then handle, ok pairs.
_KILLED = _PRELUDE + """
local retry = tonumber(ARGV[4])
for i = 5, #ARGV, 2 do
  local h, ok = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', KEYS[3], h)
  local c = redis.call('HGET', KEYS[4], h)
  if raw then
    local r = cjson.decode(raw)
    r.kills = (r.kills or 0) + 1
    r.kill_at = now
    if ok ~= '1' then
      emit('kill_failed', 'handle', h, 'attempt', tostring(r.kills))
      r.kfail = 1
    else
      r.kfail = nil
    end
    redis.call('HSET', KEYS[3], h, cjson.encode(r))
  elseif ok ~= '1' and not c then
    -- it left Redis (seen stopped) while this kill was queued: its remains are cleaned up as a
    -- dead handle's are, or nothing would ever kill them again
    redis.call('HSET', KEYS[4], h, cjson.encode({w = 0, tries = 0, next = now + retry}))
    emit('kill_failed', 'handle', h, 'attempt', '1')
  end
  if ok == '1' and c then
    redis.call('HDEL', KEYS[4], h)
    local tries = cjson.decode(c).tries
    if tries > 0 then emit('cleaned_up', 'handle', h, 'tries', tostring(tries)) end
  end
end
return 0
"""

# KEYS[3] cleanup; ARGV[4] first retry (s), ARGV[5] most tries. Returns the dead handles whose
# cleanup kill is due now, pushing each one's next try back (doubling, at most 5 minutes); one
# tried `most` times is given up with a `cleanup_abandoned` event.
_CLEANUP_DUE = _PRELUDE + """
local base, most = tonumber(ARGV[4]), tonumber(ARGV[5])
local due = {}
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local h, c = all[i], cjson.decode(all[i + 1])
  if c.next <= now then
    c.tries = c.tries + 1
    if c.tries > most then
      redis.call('HDEL', KEYS[3], h)
      emit('cleanup_abandoned', 'handle', h, 'tries', tostring(c.tries - 1))
    else
      c.next = now + math.min(base * math.pow(2, c.tries), math.max(300, base))
      redis.call('HSET', KEYS[3], h, cjson.encode(c))
      table.insert(due, h)
    end
  end
end
return due
"""

# KEYS[3] handles, KEYS[4] unknown, KEYS[5] desired, KEYS[6] cleanup; ARGV[4] '1' to set a lost
# desired number, then handle, workers, status triples. An adopted handle is live and tracked
# again, so it leaves the cleanup hash (whose re-sent kills would kill it).
_ADOPT = _PRELUDE + """
local adopted = 0
for i = 5, #ARGV, 3 do
  local h = ARGV[i]
  redis.call('HDEL', KEYS[4], h)
  redis.call('HDEL', KEYS[6], h)
  if redis.call('HEXISTS', KEYS[3], h) == 0 then
    local w = tonumber(ARGV[i + 1])
    redis.call('HSET', KEYS[3], h, cjson.encode({w = w, s = ARGV[i + 2], since = now, launch = 'adopted', kills = 0}))
    emit('adopted', 'handle', h, 'workers', tostring(w), 'status', ARGV[i + 2])
    adopted = adopted + w
  end
end
if ARGV[4] == '1' and redis.call('HEXISTS', KEYS[5], 'n') == 0 then
  local live = 0
  for _, raw in ipairs(redis.call('HVALS', KEYS[3])) do
    local r = cjson.decode(raw)
    if r.s == 'initializing' or r.s == 'running' then live = live + r.w end
  end
  redis.call('HINCRBY', KEYS[5], 'version', 1)
  redis.call('HSET', KEYS[5], 'n', live, 'at', now)
  emit('desired', 'n', tostring(live), 'source', 'adopted')
end
return adopted
"""


@dataclass(frozen=True)
class StatusResult:
    pruned: int = 0  # workers of handles that died on their own
    changed: int = 0  # handles whose record changed
    gone: int = 0  # handles that left Redis (died, or killed and confirmed)
    dead: list[str] = field(default_factory=list)  # the handles that died on their own


@dataclass(frozen=True)
class Desired:
    n: int
    version: int
    at: float
    floor: int = 0  # autoscaled clusters: the last manual request, a floor for the autoscaler


@dataclass(frozen=True)
class ClusterState:
    desired: Desired | None
    handles: dict[str, dict[str, Any]]
    pending: dict[str, dict[str, Any]]

    def handle_views(self) -> list[HandleView]:
        return [HandleView(h, int(r["w"]), r["s"], float(r.get("since", 0)), int(r.get("busy", 0)),
                           bool(r.get("hold", False))) for h, r in self.handles.items()]

    def pending_views(self) -> list[PendingView]:
        return [PendingView(l, int(p["count"]), p["state"], float(p.get("at", 0))) for l, p in self.pending.items()]

    def count(self, status: str) -> int:
        return sum(int(r["w"]) for r in self.handles.values() if r["s"] == status)

    def summary(self, cluster: str) -> dict[str, Any]:
        """The shape `fleet.status` returns and `fleet status --json` prints."""
        live_pending = [p for p in self.pending.values() if p["state"] != "cancelled"]
        return {
            "cluster": cluster,
            "desired": self.desired.n if self.desired else None,
            "version": self.desired.version if self.desired else 0,
            "initializing": self.count("initializing"),
            "running": self.count("running"),
            "stopping": self.count("stopping"),
            "draining": self.count("draining"),
            "pending": sum(int(p["count"]) for p in live_pending),
            "handles": len(self.handles),
        }

    @property
    def converged(self) -> bool:
        return (
            self.desired is not None
            and not self.pending
            and self.count("initializing") == 0
            and self.count("stopping") == 0
            and self.count("draining") == 0
            and self.count("running") == self.desired.n
        )


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, dict[str, Any]]:
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def _desired(raw: Mapping[bytes, bytes]) -> Desired | None:
    if not raw or b"n" not in raw:
        return None
    return Desired(int(raw[b"n"]), int(raw.get(b"version", 0)), float(raw.get(b"at", 0)), int(raw.get(b"floor", 0)))


class State:
    """Typed access to one fleet's keys. Safe to share across threads (redis-py pools)."""

    def __init__(self, client: redis.Redis, fleet_id: str) -> None:
        self.r = client
        self.fleet_id = fleet_id
        self._claim = client.register_script(_CLAIM)
        self._record = client.register_script(_RECORD)
        self._status = client.register_script(_STATUS)
        self._killed = client.register_script(_KILLED)
        self._adopt = client.register_script(_ADOPT)
        self._cleanup_due = client.register_script(_CLEANUP_DUE)

    def key(self, cluster: str, name: str) -> str:
        return f"fleet:{self.fleet_id}:{cluster}:{name}"

    @property
    def metrics_key(self) -> str:
        """The fleet's counters and histograms (read by fleet.metrics)."""
        return metrics_key(self.fleet_id)

    # -- desired ---------------------------------------------------------------------------
    def set_desired(self, cluster: str, n: int, *, floor: int | None = None, source: str = "request") -> int:
        """Store the desired number (and the autoscaler's floor); returns its new version (only grows)."""
        key = self.key(cluster, "desired")
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(key, "version", 1)
        pipe.hset(key, mapping={"n": n, "at": time.time(), **({"floor": floor} if floor is not None else {})})
        self._event(pipe, cluster, "desired", n=n, source=source)
        version, *_ = pipe.execute()
        return int(version)

    def set_desired_and_flag(self, cluster: str, n: int, flag: str, *, floor: int | None = None,
                             source: str = "request", flag_ttl: int = 60) -> tuple[int, bool]:
        """`set_desired`, and SET `flag` NX (the "reconcile queued" marker) in the same round trip.
        Returns (version, whether the flag was set by this call)."""
        key = self.key(cluster, "desired")
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(key, "version", 1)
        pipe.hset(key, mapping={"n": n, "at": time.time(), **({"floor": floor} if floor is not None else {})})
        self._event(pipe, cluster, "desired", n=n, source=source)
        pipe.set(flag, "1", nx=True, ex=flag_ttl)
        version, *_, flagged = pipe.execute()
        return int(version), bool(flagged)

    def get_desired(self, cluster: str) -> Desired | None:
        return _desired(self.r.hgetall(self.key(cluster, "desired")))

    # -- snapshots -------------------------------------------------------------------------
    def tracked_clusters(self) -> dict[str, int]:
        """Every cluster name that has handles in Redis, live or dead with remains still to kill
        (the cleanup hash) -> how many (a SCAN: for start-up and the CLI, not for the sweep)."""
        prefix = f"fleet:{self.fleet_id}:"
        names: set[str] = set()
        for kind in ("handles", "cleanup"):
            for k in self.r.scan_iter(match=f"{prefix}*:{kind}", count=1000):
                name = k.decode()[len(prefix):-len(kind) - 1]
                if ":" not in name:  # not e.g. provider keys
                    names.add(name)
        ordered = sorted(names)
        pipe = self.r.pipeline(transaction=False)
        for n in ordered:
            pipe.hlen(self.key(n, "handles"))
            pipe.hlen(self.key(n, "cleanup"))
        counts = pipe.execute()
        totals = {n: int(counts[2 * i]) + int(counts[2 * i + 1]) for i, n in enumerate(ordered)}
        return {n: c for n, c in totals.items() if c}

    def cleanup_count(self, cluster: str) -> int:
        """Dead handles whose remains still wait for a successful kill."""
        return int(self.r.hlen(self.key(cluster, "cleanup")))

    def keys_of(self, cluster: str) -> list[str]:
        return [self.key(cluster, n) for n in ("desired", "handles", "pending")]

    def read(self, cluster: str, client: Any = None) -> ClusterState:
        """One consistent snapshot of a cluster (MULTI), or immediate reads on a WATCHing pipe."""
        if client is not None:
            d, h, p = (client.hgetall(k) for k in self.keys_of(cluster))
        else:
            pipe = self.r.pipeline(transaction=True)
            for k in self.keys_of(cluster):
                pipe.hgetall(k)
            d, h, p = pipe.execute()
        return ClusterState(_desired(d), _decode(h), _decode(p))

    def read_many(self, clusters: Iterable[str]) -> dict[str, ClusterState]:
        clusters = list(clusters)
        pipe = self.r.pipeline(transaction=False)
        for c in clusters:
            for k in self.keys_of(c):
                pipe.hgetall(k)
        raw = pipe.execute()
        return {
            c: ClusterState(_desired(raw[3 * i]), _decode(raw[3 * i + 1]), _decode(raw[3 * i + 2]))
            for i, c in enumerate(clusters)
        }

    # -- launches --------------------------------------------------------------------------
    def claim_launch(self, cluster: str, launch_id: str) -> tuple[str, int]:
        """Mark a pending launch as taken by a run task: ('claimed', count); ('settle', count) for
        a launch cancelled after a run task had taken it (it may have made workers); or
        ('cancelled'|'missing', 0)."""
        state, count = self._claim(keys=[self.key(cluster, "pending")], args=[launch_id, time.time()])
        return state.decode(), int(count)

    def _script(self, script: Any, cluster: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of the event-writing scripts (see _PRELUDE for the leading keys and args)."""
        return script(keys=[self.key(cluster, "events"), self.metrics_key, *keys],
                      args=[cluster, EVENTS_MAXLEN, time.time(), *args])

    def record_launch(self, cluster: str, launch_id: str, handles: list[str]) -> str:
        """Move a launch's handles into the cluster (initializing, or stopping if it was cancelled
        meanwhile) and drop the pending entry, atomically. Returns the launch's previous state."""
        counts: dict[str, int] = {}
        for h in handles:
            counts[h] = counts.get(h, 0) + 1
        args: list[Any] = [launch_id]
        for h, w in counts.items():
            args += [h, w]
        keys = [self.key(cluster, "pending"), self.key(cluster, "handles")]
        return str(self._script(self._record, cluster, keys, args).decode())

    # -- sweep and kills ---------------------------------------------------------------------
    def apply_status(self, cluster: str, status: Mapping[str, str], grace: float = 0.0,
                     cleanup_retry: float = 10.0) -> StatusResult:
        """Write observed statuses in one script call; drops stopped handles. Dead ones (and
        stopping ones whose last kill failed) enter the cleanup hash: see `cleanup_due`."""
        if not status:
            return StatusResult()
        args: list[Any] = [grace, cleanup_retry]
        for h, s in status.items():
            args += [h, s]
        pruned, changed, gone, dead = self._script(
            self._status, cluster, [self.key(cluster, "handles"), self.key(cluster, "cleanup")], args)
        return StatusResult(int(pruned), int(changed), int(gone), [h.decode() for h in dead])

    def record_kills(self, cluster: str, results: Mapping[str, bool], cleanup_retry: float = 10.0) -> None:
        """Count a kill attempt on each handle (they stay stopping until the provider no longer
        reports them; see apply_status); a failed one is an event. A failed kill of a handle that
        already left Redis enters the cleanup hash; a successful one ends a cleanup."""
        if not results:
            return
        args: list[Any] = [cleanup_retry]
        for h, ok in results.items():
            args += [h, "1" if ok else "0"]
        self._script(self._killed, cluster, [self.key(cluster, "handles"), self.key(cluster, "cleanup")], args)

    def cleanup_due(self, cluster: str, retry: float, most: int) -> list[str]:
        """Dead handles whose cleanup kill should be sent (again) now; one script call. A
        successful kill (`record_kills`) ends a handle's cleanup."""
        due = self._script(self._cleanup_due, cluster, [self.key(cluster, "cleanup")], [retry, most])
        return [h.decode() for h in due]

    def transition(self, cluster: str, handles: Iterable[str], allowed: Iterable[str], to: str,
                   event: str, *, event_fields: Mapping[str, Any] | None = None, **extra: Any) -> list[str]:
        """Move handles whose status is in `allowed` to status `to` (since = now, plus `extra`
        fields on the record), with one event each (plus `event_fields`), atomically
        (WATCH/MULTI). Returns the handles moved."""
        key, wanted, ok = self.key(cluster, "handles"), list(dict.fromkeys(handles)), set(allowed)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.hmget(key, wanted) if wanted else []
                    records = {h: json.loads(v) for h, v in zip(wanted, raw, strict=True) if v}
                    moved = [h for h, r in records.items() if r["s"] in ok]
                    if not moved:
                        return []
                    now = time.time()
                    pipe.multi()
                    for h in moved:
                        was = records[h]["s"]
                        pipe.hset(key, h, json.dumps({**records[h], "s": to, "since": now, "kill_at": now, **extra}))
                        self._event(pipe, cluster, event, handle=h, workers=records[h]["w"], was=was,
                                    **(event_fields or {}))
                    pipe.execute()
                    return moved
                except redis.WatchError:
                    continue

    def patch(self, cluster: str, fields: Mapping[str, Mapping[str, Any]]) -> int:
        """Set fields on existing handle records (handle -> {field: value}); returns # patched."""
        key = self.key(cluster, "handles")
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    wanted = list(fields)
                    raw = pipe.hmget(key, wanted) if wanted else []
                    records = {h: json.loads(v) for h, v in zip(wanted, raw, strict=True) if v}
                    changed = {h: r for h, r in records.items() if any(r.get(k) != v for k, v in fields[h].items())}
                    if not changed:
                        return 0
                    pipe.multi()
                    for h, r in changed.items():
                        pipe.hset(key, h, json.dumps({**r, **fields[h]}))
                    pipe.execute()
                    return len(changed)
                except redis.WatchError:
                    continue

    # -- recovery --------------------------------------------------------------------------
    def track_unknown(self, cluster: str, listed: Mapping[str, int], now: float) -> dict[str, float]:
        """Remember when each live handle the provider lists but Redis does not know was first
        seen; forget the ones no longer in that set. Returns handle -> first seen."""
        key = self.key(cluster, "unknown")
        old = {k.decode(): json.loads(v) for k, v in self.r.hgetall(key).items()}
        keep = {h: {"w": w, "first": old.get(h, {}).get("first", now)} for h, w in listed.items()}
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        if keep:
            pipe.hset(key, mapping={h: json.dumps(v) for h, v in keep.items()})
        pipe.execute()
        return {h: float(v["first"]) for h, v in keep.items()}

    def unknown_workers(self, cluster: str) -> int:
        return sum(int(json.loads(v)["w"]) for v in self.r.hvals(self.key(cluster, "unknown")))

    def adopt(self, cluster: str, found: Mapping[str, tuple[int, str]], set_desired: bool) -> int:
        """Record handles found at the provider (handle -> (workers, status)); with set_desired
        and no desired number stored, desired := the cluster's live workers (the seed's reconnect)."""
        args: list[Any] = ["1" if set_desired else "0"]
        for h, (w, s) in found.items():
            args += [h, w, s]
        keys = [self.key(cluster, "handles"), self.key(cluster, "unknown"), self.key(cluster, "desired"),
                self.key(cluster, "cleanup")]
        return int(self._script(self._adopt, cluster, keys, args))

    # -- events ----------------------------------------------------------------------------
    def _event(self, pipe: Any, cluster: str, kind: str, **fields: Any) -> None:
        """Append an event on `pipe` (a pipeline or the client) and count it, as emit() does."""
        data = {"kind": kind, **{k: str(v) for k, v in fields.items()}}
        pipe.xadd(self.key(cluster, "events"), data, maxlen=EVENTS_MAXLEN, approximate=True)
        record_event(pipe, self.fleet_id, cluster, kind)

    def _events(self, pipe: Any, cluster: str, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        """Append one `kind` event per item on `pipe`, counted with one HINCRBY for them all."""
        key, n = self.key(cluster, "events"), 0
        for fields in items:
            pipe.xadd(key, {"kind": kind, **{k: str(v) for k, v in fields.items()}}, maxlen=EVENTS_MAXLEN,
                      approximate=True)
            n += 1
        if n:
            record_event(pipe, self.fleet_id, cluster, kind, n)

    def event(self, cluster: str, kind: str, **fields: Any) -> None:
        pipe = self.r.pipeline(transaction=True)
        self._event(pipe, cluster, kind, **fields)
        pipe.execute()

    def events(self, cluster: str, count: int = 50) -> list[dict[str, Any]]:
        """The newest `count` events, oldest first."""
        out = []
        for eid, data in reversed(self.r.xrevrange(self.key(cluster, "events"), count=count)):
            ms = int(eid.split(b"-")[0])
            out.append({"at": ms / 1000.0, **{k.decode(): v.decode() for k, v in data.items()}})
        return out
