"""A small fake of the Compute Engine REST API (v1), enough for the gce provider's tests.

It answers what `google-cloud-compute`'s REST transport sends, in the JSON the real API returns:

* `POST   /compute/v1/projects/P/zones/Z/instances?requestId=R`  insert (R dedups: the same
  request id returns the same operation; a taken name with another request id is a 409)
* `POST   /compute/v1/projects/P/zones/Z/instances/bulkInsert?requestId=R`  bulkInsert of the
  instances named in `perInstanceProperties` from `instanceProperties` (`count` and `minCount`
  must be their number: all or nothing); R dedups as for insert; any name taken is a 409 and
  creates nothing; one operation for the whole request
* `GET    /compute/v1/projects/P/zones/Z/instances/NAME`          get (404 when absent)
* `GET    /compute/v1/projects/P/zones/Z/instances?filter=&maxResults=&pageToken=`  list, with
  a label filter (`labels.K = "V"` terms joined by AND) and `nextPageToken` pages
* `DELETE /compute/v1/projects/P/zones/Z/instances/NAME`          delete (404 when absent)
* `GET|POST /compute/v1/projects/P/zones/Z/operations/OP[/wait]`  operations
* `GET    /compute/v1/projects/P/zones/Z/operations?filter=&maxResults=&pageToken=`  list the
  zone's operations, with a filter of `field = "value"` terms joined by AND (e.g.
  `operationType = "compute.instances.preempted"`) and pages

An operation is RUNNING until it has been read `operation_polls` times through get/wait (0: DONE
at once); its error, if any, shows once it is DONE, as on the real API. A new instance is
PROVISIONING for its first `ready_after_reads` reads, then RUNNING. Counters of calls by kind
(`insert`, `bulk_insert`, `get`, `list`, `delete`, `operation`, `operation_list`) and a log of
requests let tests count API calls. Faults: `fail(kind, status, reason)` queues canned HTTP
errors for the next requests of a kind (`processed=True`: the request takes effect, only its
answer is lost);
`fail_operation(code)` makes the next inserts' (and bulk inserts') operations finish DONE with
that error code (e.g. QUOTA_EXCEEDED) and create nothing.

Preemption: `preempt(project, zone, name)` does what GCE does to a Spot or preemptible VM it
reclaims: it records a DONE zone operation of type `compute.instances.preempted` targeting the
instance, then stops it (TERMINATED), or deletes it when its scheduling says
`instanceTerminationAction` DELETE (a Spot VM's STOP is the default, as on GCE). A standard VM
cannot be preempted (ValueError). Instances keep the `scheduling` they were inserted with.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PREFIX = "/compute/v1/projects/"
#: what a request handler answers: (HTTP status, JSON body, extra headers)
Answer = tuple[int, dict[str, Any], dict[str, str]]
_PATH = re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/"
                   r"(?P<coll>instances|operations)(?:/(?P<name>[^/]+))?(?P<wait>/wait)?$")
_TERM = re.compile(r'^\(?\s*labels\.(?P<key>[a-z0-9_-]+)\s*=\s*"(?P<value>[^"]*)"\s*\)?$')
_FIELD_TERM = re.compile(r'^\(?\s*(?P<field>[A-Za-z][A-Za-z0-9_.-]*)\s*=\s*"(?P<value>[^"]*)"\s*\)?$')
PREEMPTED = "compute.instances.preempted"
_REASONS = {400: "invalid", 401: "required", 403: "forbidden", 404: "notFound", 409: "alreadyExists",
            429: "rateLimitExceeded", 500: "backendError", 503: "backendError"}


def parse_filter(text: str) -> dict[str, str]:
    """The label equalities of a filter (`labels.a = "x" AND labels.b = "y"`); ValueError else."""
    if not text.strip():
        return {}
    labels: dict[str, str] = {}
    for term in re.split(r"\s+AND\s+", text.strip()):
        m = _TERM.match(term.strip())
        if not m:
            raise ValueError(f"unsupported filter term {term!r}")
        labels[m["key"]] = m["value"]
    return labels


def parse_terms(text: str) -> dict[str, str]:
    """The field equalities of a filter (`operationType = "x" AND targetId = "y"`), keyed by
    field path; ValueError for anything else."""
    if not text.strip():
        return {}
    terms: dict[str, str] = {}
    for term in re.split(r"\s+AND\s+", text.strip()):
        m = _FIELD_TERM.match(term.strip())
        if not m:
            raise ValueError(f"unsupported filter term {term!r}")
        terms[m["field"]] = m["value"]
    return terms


def _field(body: dict[str, Any], path: str) -> str:
    """The value at a dotted field path of a JSON body, as a string ("" if absent)."""
    value: Any = body
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def not_found(project: str, zone: str, name: str | None) -> dict[str, Any]:
    return error_body(404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found")


def error_body(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """The error JSON of the Compute API (what google.api_core's from_http_response reads)."""
    reason = reason or _REASONS.get(status, "error")
    return {"error": {"code": status, "message": message,
                      "errors": [{"message": message, "domain": "global", "reason": reason}]}}


@dataclass
class Instance:
    body: dict[str, Any]
    status: str = "PROVISIONING"
    reads: int = 0


@dataclass
class FakeGCE:
    """The fake server's state; `start()` serves it on 127.0.0.1 at a free port."""

    ready_after_reads: int = 1
    operation_polls: int = 1
    instances: dict[tuple[str, str, str], Instance] = field(default_factory=dict)
    operations: dict[str, list[Any]] = field(default_factory=dict)  # name -> [operation, polls left]
    request_ids: dict[str, str] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    log: list[tuple[str, str, dict[str, list[str]]]] = field(default_factory=list)
    faults: dict[str, deque[tuple[int, dict[str, Any], dict[str, str], bool]]] = field(default_factory=dict)
    op_faults: deque[str | None] = field(default_factory=deque)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _ids: Any = field(default_factory=lambda: itertools.count(1000))
    _server: ThreadingHTTPServer | None = None

    # -- test hooks ------------------------------------------------------------------------
    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-gce", daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def reset_counters(self) -> None:
        with self.lock:
            self.calls.clear()
            self.log.clear()

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self.op_faults.clear()

    def fail(self, kind: str, status: int, reason: str | None = None, message: str = "injected",
             times: int = 1, headers: dict[str, str] | None = None, processed: bool = False) -> None:
        """Answer the next `times` requests of `kind` (insert, get, list, delete, operation) with
        an HTTP error; with `processed` the request is carried out first (a lost answer)."""
        with self.lock:
            q = self.faults.setdefault(kind, deque())
            q.extend([(status, error_body(status, message, reason), headers or {}, processed)] * times)

    def fail_operation(self, code: str, times: int = 1, message: str = "injected", after: int = 0) -> None:
        """After `after` good inserts, the next `times` inserts are accepted but their operation
        ends DONE with error `code` (and creates nothing)."""
        with self.lock:
            self.op_faults.extend([None] * after + [f"{code}\0{message}"] * times)

    def add_instance(self, project: str, zone: str, name: str, labels: dict[str, str] | None = None,
                     status: str = "RUNNING") -> None:
        """Create an instance behind the provider's back (by hand, or by another request)."""
        with self.lock:
            self.instances[(project, zone, name)] = Instance(
                {"name": name, "labels": dict(labels or {}), "id": str(next(self._ids))}, status, 10**6)

    def preempt(self, project: str, zone: str, name: str) -> dict[str, Any]:
        """Preempt a Spot or preemptible instance as GCE does (see the module docstring);
        returns the `compute.instances.preempted` operation it records."""
        with self.lock:
            inst = self.instances[(project, zone, name)]
            scheduling = inst.body.get("scheduling") or {}
            if scheduling.get("provisioningModel") != "SPOT" and not scheduling.get("preemptible"):
                raise ValueError(f"instance {name} is neither Spot nor preemptible: GCE does not preempt it")
            op = self._operation(project, zone, PREEMPTED, name)
            self.operations[op["name"]][1] = 0  # a record of what happened: DONE from its first read
            if scheduling.get("instanceTerminationAction") == "DELETE":
                del self.instances[(project, zone, name)]
            else:
                inst.status, inst.reads = "TERMINATED", 10**6
            return op

    def set_status(self, project: str, zone: str, name: str, status: str) -> None:
        with self.lock:
            inst = self.instances[(project, zone, name)]
            inst.status, inst.reads = status, 10**6

    def get(self, project: str, zone: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            inst = self.instances.get((project, zone, name))
            return None if inst is None else self._view(project, zone, inst, read=False)

    def names(self, project: str, zone: str) -> set[str]:
        with self.lock:
            return {n for (p, z, n) in self.instances if (p, z) == (project, zone)}

    # -- the API ---------------------------------------------------------------------------
    def handle(self, method: str, url: str, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
        m = _PATH.match(parts.path)
        if not m:
            return 404, error_body(404, f"no such path {parts.path}"), {}
        project, zone, coll, name = m["project"], m["zone"], m["coll"], m["name"]
        kind = self._kind(method, coll, name)
        if kind is None:
            return 405, error_body(405, f"{method} not supported on {parts.path}", "badRequest"), {}
        with self.lock:
            self.calls[kind] += 1
            self.log.append((kind, parts.path, query))
            fault = self.faults[kind].popleft() if self.faults.get(kind) else None
            if fault is not None and not fault[3]:
                return fault[:3]
            answer = self._answer(kind, project, zone, name, query, body)
            return fault[:3] if fault is not None else answer

    def _answer(self, kind: str, project: str, zone: str, name: str | None, query: dict[str, list[str]],
                body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            try:
                if kind == "insert":
                    return self._insert(project, zone, query, json.loads(body or b"{}"))
                if kind == "bulk_insert":
                    return self._bulk_insert(project, zone, query, json.loads(body or b"{}"))
                if kind == "get":
                    inst = self.instances.get((project, zone, name or ""))
                    if inst is None:
                        return 404, not_found(project, zone, name), {}
                    return 200, self._view(project, zone, inst), {}
                if kind == "list":
                    return self._list(project, zone, query)
                if kind == "delete":
                    return self._delete(project, zone, name or "")
                if kind == "operation_list":
                    return self._list_operations(project, zone, query)
                entry = self.operations.get(name or "")
                if entry is None:
                    return 404, error_body(404, f"operation {name} not found"), {}
                entry[1] -= 1
                return 200, self._op_view(entry), {}
            except ValueError as exc:
                return 400, error_body(400, str(exc), "invalid"), {}

    @staticmethod
    def _kind(method: str, coll: str, name: str | None) -> str | None:
        if coll == "operations":
            if not name:
                return "operation_list" if method == "GET" else None
            return "operation" if method in ("GET", "POST") else None
        if method == "POST" and name == "bulkInsert":
            return "bulk_insert"
        return {("POST", False): "insert", ("GET", False): "list", ("GET", True): "get",
                ("DELETE", True): "delete"}.get((method, bool(name)))

    def _operation(self, project: str, zone: str, kind: str, target: str, error: str | None = None) -> dict[str, Any]:
        op_id = next(self._ids)
        op: dict[str, Any] = {
            "kind": "compute#operation", "id": str(op_id), "name": f"operation-{op_id}",
            "zone": f"{PREFIX}{project}/zones/{zone}", "operationType": kind, "status": "DONE",
            "progress": 100, "targetLink": f"{PREFIX}{project}/zones/{zone}/instances/{target}",
            "selfLink": f"{PREFIX}{project}/zones/{zone}/operations/operation-{op_id}",
        }
        if error:
            code, message = error.split("\0", 1)
            op["error"] = {"errors": [{"code": code, "message": message}]}
            op["httpErrorStatusCode"], op["httpErrorMessage"] = 403 if "QUOTA" in code else 503, code
        self.operations[op["name"]] = [op, self.operation_polls]
        return op

    @staticmethod
    def _op_view(entry: list[Any]) -> dict[str, Any]:
        op, polls = entry
        if polls > 0:
            return {k: v for k, v in op.items() if k not in ("error", "httpErrorStatusCode", "httpErrorMessage")} | {
                "status": "RUNNING", "progress": 0}
        return op

    @staticmethod
    def _check(name: str, labels: dict[str, str]) -> None:
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
            raise ValueError(f"Invalid value for field 'resource.name': '{name}'")
        for key, value in labels.items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
                raise ValueError(f"Invalid value for field 'resource.labels': '{key}={value}'")

    def _bulk_insert(self, project: str, zone: str, query: dict[str, list[str]], body: dict[str, Any]) -> Answer:
        names = list(body.get("perInstanceProperties") or {})
        props = dict(body.get("instanceProperties") or {})
        if not names or int(body.get("count") or 0) != len(names) or int(body.get("minCount") or len(names)) != len(
                names):
            raise ValueError("count and minCount must be the number of perInstanceProperties names")
        if len(names) > 1000:
            raise ValueError("Invalid value for field 'resource.count': at most 1000")
        for name in names:
            self._check(name, props.get("labels") or {})
        request_id = (query.get("requestId") or [""])[0]
        if request_id and request_id in self.request_ids:
            return 200, self._op_view(self.operations[self.request_ids[request_id]]), {}
        taken = [n for n in names if (project, zone, n) in self.instances]
        if taken:
            msg = f"The resource 'projects/{project}/zones/{zone}/instances/{taken[0]}' already exists"
            return 409, error_body(409, msg, "alreadyExists"), {}
        error = self.op_faults.popleft() if self.op_faults else None
        op = self._operation(project, zone, "bulkInsert", names[0], error)
        if error is None:
            machine = f"zones/{zone}/machineTypes/{props.get('machineType', '')}"
            for name in names:
                self.instances[(project, zone, name)] = Instance(
                    {**props, "machineType": machine, "name": name, "id": str(next(self._ids))})
        if request_id:
            self.request_ids[request_id] = op["name"]
        return 200, self._op_view(self.operations[op["name"]]), {}

    def _insert(self, project: str, zone: str, query: dict[str, list[str]], body: dict[str, Any]) -> Answer:
        name = body.get("name", "")
        self._check(name, body.get("labels") or {})
        request_id = (query.get("requestId") or [""])[0]
        if request_id and request_id in self.request_ids:
            return 200, self._op_view(self.operations[self.request_ids[request_id]]), {}
        if (project, zone, name) in self.instances:
            msg = f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists"
            return 409, error_body(409, msg, "alreadyExists"), {}
        error = self.op_faults.popleft() if self.op_faults else None
        op = self._operation(project, zone, "insert", name, error)
        if error is None:
            self.instances[(project, zone, name)] = Instance({**body, "id": str(next(self._ids))})
        if request_id:
            self.request_ids[request_id] = op["name"]
        return 200, self._op_view(self.operations[op["name"]]), {}

    def _view(self, project: str, zone: str, inst: Instance, read: bool = True) -> dict[str, Any]:
        if inst.status == "PROVISIONING" and inst.reads >= self.ready_after_reads:
            inst.status = "RUNNING"
        if read:
            inst.reads += 1
        return {**inst.body, "kind": "compute#instance", "status": inst.status,
                "zone": f"{PREFIX}{project}/zones/{zone}",
                "selfLink": f"{PREFIX}{project}/zones/{zone}/instances/{inst.body['name']}"}

    def _list(self, project: str, zone: str, query: dict[str, list[str]]) -> Answer:
        labels = parse_filter((query.get("filter") or [""])[0])
        size = int((query.get("maxResults") or ["500"])[0])
        if not 0 <= size <= 500:
            raise ValueError("Invalid value for field 'maxResults'")
        size = size or 500
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        matches = sorted(
            (n, inst) for (p, z, n), inst in self.instances.items()
            if (p, z) == (project, zone) and all((inst.body.get("labels") or {}).get(k) == v for k, v in labels.items())
        )
        page = matches[start:start + size]
        out: dict[str, Any] = {"kind": "compute#instanceList", "id": f"{PREFIX}{project}/zones/{zone}/instances",
                               "items": [self._view(project, zone, inst) for _, inst in page]}
        if start + size < len(matches):
            out["nextPageToken"] = str(start + size)
        return 200, out, {}

    def _list_operations(self, project: str, zone: str, query: dict[str, list[str]]) -> Answer:
        terms = parse_terms((query.get("filter") or [""])[0])
        size = int((query.get("maxResults") or ["500"])[0]) or 500
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        where = f"{PREFIX}{project}/zones/{zone}"
        matches = [self._op_view(entry) for entry in self.operations.values()
                   if entry[0]["zone"] == where and all(_field(entry[0], k) == v for k, v in terms.items())]
        out: dict[str, Any] = {"kind": "compute#operationList", "id": f"{where}/operations",
                               "items": matches[start:start + size]}
        if start + size < len(matches):
            out["nextPageToken"] = str(start + size)
        return 200, out, {}

    def _delete(self, project: str, zone: str, name: str) -> Answer:
        if self.instances.pop((project, zone, name), None) is None:
            return 404, not_found(project, zone, name), {}
        op = self._operation(project, zone, "delete", name)
        return 200, self._op_view(self.operations[op["name"]]), {}


class _Handler(BaseHTTPRequestHandler):
    state: FakeGCE
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body in two writes wait for a delayed ACK

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload, headers = self.state.handle(self.command, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # silence the access log
        pass
