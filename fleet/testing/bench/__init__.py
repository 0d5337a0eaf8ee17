"""`fleet bench`: how fast and how cheap Fleet is, measured side by side on this machine, in one run.

Sections (see docs/benchmarks.md for figures and what they led to):

1. ``convergence``: scale 0 -> N -> 0 through real ``celery -A tasks worker`` subprocesses (a
   control worker, solo pool; a provider worker, threads pool, where the ``memory`` provider
   lives) and a real Redis (embedded, no persistence); time per worker at each N beside the
   smallest N's, and the processes' peak memory. Beat sweeps every ``SWEEP_INTERVAL`` seconds.
2. ``running``: from ``fleet.scale`` to every worker running in Redis, with Fleet's default sweep
   interval, for the ``local`` provider (real processes) and the ``memory`` one.
3. ``throughput``: ``fleet.scale`` requests per second one control worker process absorbs, and
   two, beside no-op tasks per second through a Celery app with Celery's defaults
   (``fleet.testing.bare``) in the same run.
4. ``sweep``: one full sweep (``Sweeper.sweep_cluster`` per cluster, in this process, no-op
   dispatcher) over many handles and clusters; Redis round trips counted by a counting
   connection class, commands from INFO commandstats.
5. ``cloud``: API calls to scale 0 -> N -> 0 on aws_ec2 (on-demand through RunInstances, and
   spot through CreateFleet: ``ec2spot``) and aws_ecs (moto server) and gce (the
   fake server of fleet.testing.backends.gce), through the managed layer in this process
   (``fleet.testing.inline``), beside one call per instance; and ECS's StopTask calls beside a
   sequential loop of them.
6. ``containers``: time to N running containers through Fleet with the docker provider against
   podman's Docker API, beside a plain loop of docker SDK calls.

The control planes of sections 1, 2, 3 and 6 are `fleet.stack.Stack` (through
`fleet.testing.plane`), the one `fleet up` runs. Cloud SDKs and backends are imported inside the
functions that need them.

Modules: `run` (the run and its sizes), `report` (targets and tables), `measure` and
`controlplane` (what the sections measure with), and one per section: `scaling` (1, 2),
`throughput` (3), `sweep` (4), `cloud` (5), `containers` (6).
"""


from fleet.testing.bench.cloud import EC2_MUTATING, ECS_MUTATING, GCE_MUTATING, MODELLED_LATENCY, section_cloud
from fleet.testing.bench.containers import section_containers
from fleet.testing.bench.controlplane import (
    PROVIDER_LIMITS,
    SWEEP_INTERVAL,
    ControlPlane,
    control_plane,
    memory_clusters,
)
from fleet.testing.bench.measure import commandstats, delta, machine, op_counts, proc_status
from fleet.testing.bench.report import SECTIONS, converging, failed_targets, render, targets
from fleet.testing.bench.run import Sizes, run_bench
from fleet.testing.bench.scaling import section_convergence, section_running
from fleet.testing.bench.sweep import section_sweep
from fleet.testing.bench.throughput import bare_worker, section_throughput

__all__ = [
    "EC2_MUTATING", "ECS_MUTATING", "GCE_MUTATING", "MODELLED_LATENCY", "PROVIDER_LIMITS", "SECTIONS",
    "SWEEP_INTERVAL", "ControlPlane", "Sizes", "bare_worker", "commandstats", "control_plane", "converging",
    "delta", "failed_targets", "machine", "memory_clusters", "op_counts", "proc_status", "render", "run_bench",
    "section_cloud", "section_containers", "section_convergence", "section_running", "section_sweep",
    "section_throughput", "targets",
]
