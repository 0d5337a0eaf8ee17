"""Redis ACL users per role, least privilege, defined once: `fleet acl --role ROLE` prints the
`ACL SETUSER` line, docs/operations.md shows that output, and tests/test_acl.py creates its
users from the same rules on a real redis-server and a real control plane.

- `control`: the control-plane workers and beat (and `fleet up`): everything.
- `read-only`: `fleet status`, `fleet metrics`, `fleet console --read-only`: reads of the fleet's
  own keys (`fleet:<id>:*`), nothing written, no pub/sub.
- `requester`: senders of public tasks (`fleet scale`, `fleet.client`): LPUSH on the public
  queue, the results (`celery-task-meta-*`, their pub/sub channels), a request's fate
  (`fleet:<id>:request:*`, read only), nothing else.

The command sets are the smallest that the tests found to work with the pinned redis-py,
kombu and Celery; re-run tests/test_acl.py after upgrading them.
"""

from __future__ import annotations

import shlex

from fleet.errors import InvalidRequest

ROLES: tuple[str, ...] = ("control", "read-only", "requester")

#: What every role's connection needs: the health check, the database (a fleet on /1 or more),
#: the server's clock. AUTH and HELLO need no rule: Redis lets every user run them.
_CONNECT: tuple[str, ...] = ("+ping", "+select", "+time")


def rules(role: str, fleet_id: str, public_queue: str = "celery") -> tuple[str, ...]:
    """The ACL rules (the arguments after `ACL SETUSER <user> reset on >PASSWORD`) for `role`
    of fleet `fleet_id` whose public queue is `public_queue`. InvalidRequest for another role."""
    if role == "control":
        return ("~*", "&*", "+@all")
    if role == "read-only":
        return (f"~fleet:{fleet_id}:*", "resetchannels", "-@all", "+@read", *_CONNECT)
    if role == "requester":
        # kombu's queue_declare: LLEN on the queue's priority variants (`<queue>\\x06\\x16<n>`)
        # and SADD of its binding to `_kombu.binding.<queue>` and `_kombu.binding_permanent.<queue>`
        return (f"~{public_queue}", f"%R~{public_queue}*", f"~_kombu.binding.{public_queue}",
                f"~_kombu.binding_permanent.{public_queue}", f"%R~fleet:{fleet_id}:request:*",
                "~celery-task-meta-*", "&celery-task-meta-*", "-@all", "+multi", "+exec", "+lpush", "+llen",
                "+sadd", "+get", "+subscribe", "+unsubscribe", *_CONNECT)
    raise InvalidRequest(f"unknown role {role[:40]!r}: one of {', '.join(ROLES)}")


def setuser(role: str, fleet_id: str, user: str, public_queue: str = "celery") -> str:
    """The `ACL SETUSER` command for `user` in `role`, quoted for a shell (`redis-cli ...`), with
    the placeholder `>PASSWORD` where the operator puts the password."""
    args = ["ACL", "SETUSER", user, "reset", "on", ">PASSWORD", *rules(role, fleet_id, public_queue)]
    return " ".join(shlex.quote(a) for a in args)
