"""The `fleet` command's subcommands, by section; `fleet.cli` composes them into the group.

* `actions`: the control plane and what it is asked to do (up, scale, hold, drain, kill, rollout, clear)
* `views`: what Fleet knows, read from Redis (status, clusters, providers, events)
* `servers`: what serves until Ctrl-C (console, metrics)
* `tools`: the rest (acl, bench, demo)
* `common`: what they share (the chosen config, the output consoles, a public task call)
"""
