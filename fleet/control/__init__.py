"""The managed layer, split by flow (in the manner of Ray autoscaler v2's instance manager and
reconciler, and Arvados's scheduler beside its worker pool):

| module          | holds                                                                          |
|-----------------|--------------------------------------------------------------------------------|
| `api`           | the public and operator requests: scale, status, clear, hold, drain, kill     |
| `queries`       | read-only views (status, handles, events) that need no dispatcher: the CLI's   |
| `reconciler`    | one step towards the desired number: plan, commit, coalesce, dispatch         |
| `launcher`      | the provider's side of a plan: run a launch, settle a cancelled one, kill     |
| `sweeper`       | observe the cluster through its provider: statuses, adoption, timeouts, re-sends |
| `followup`      | new handles' status asked soon after their launch, backing off to the sweep    |
| `draining`      | the cluster's Celery workers: what they hold, drains, the autoscaler's memory  |
| `pool`          | each provider built once, wrapped (`fleet.wrappers`), its options validated once |
| `epoch`         | noticing that Redis lost its data under a running control plane                |
| `dispatcher`    | the `Dispatcher` protocol: how work is sent elsewhere (Celery in `tasks/`)     |

`fleet.manager.Manager` builds them all for one process. None of them imports Celery's app; work
sent elsewhere goes through a `Dispatcher`.
"""
