"""Spot interruptions for the `aws_ec2` provider: EventBridge's interruption warnings and
rebalance recommendations, read from the cluster's SQS queue (`read_notices`, never deleting a
notice: `delete_messages` does, once Fleet acknowledges it), and instances EC2 reclaimed, told by
their state reason (`reclaimed`)."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from fleet.errors import ProviderError
from fleet.provider import Cause, Interruption
from providers._aws import aws_errors, chunks

log = logging.getLogger("providers.aws_ec2")  # the provider's one logger name, whichever module logs

INSTANCE_ID = re.compile(r"i-[0-9a-f]{8}(?:[0-9a-f]{9})?")
#: the state reason of an instance EC2 took back (a spot interruption)
SPOT_RECLAIMED = "Server.SpotInstanceTermination"
#: EventBridge detail-types on the interruption queue, and what they mean
NOTICES = {"EC2 Spot Instance Interruption Warning": Cause.SPOT_INTERRUPTION,
           "EC2 Instance Rebalance Recommendation": Cause.REBALANCE}
#: EC2 takes a spot instance two minutes after its interruption warning
SPOT_WARNING_SECONDS = 120.0
#: ReceiveMessage calls per `interruptions` call at most (10 messages each)
RECEIVES = 10
#: the largest message body read (SQS takes 256 KiB; an SNS envelope adds its own fields)
BODY_LIMIT = 512 * 1024
SQS_HINTS = {
    "AWS.SimpleQueueService.NonExistentQueue": "fix provider_options.interruption_queue_url",
    "QueueDoesNotExist": "fix provider_options.interruption_queue_url",
    "InvalidAddress": "fix provider_options.interruption_queue_url (or sqs_endpoint_url)",
}


def reclaimed(instance: Mapping[str, Any]) -> bool:
    """Whether EC2 took this instance back (a spot interruption), by its state reason."""
    return str((instance.get("StateReason") or {}).get("Code") or "") == SPOT_RECLAIMED


def event_time(value: Any) -> float | None:
    """Unix seconds of an EventBridge `time` (ISO 8601, UTC), None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def parse_notice(message: Mapping[str, Any]) -> Interruption | str:
    """The interruption an SQS message holds (an EventBridge event, or one wrapped by SNS), or why
    it holds none (never the payload: it is not ours to log)."""
    body = message.get("Body")
    if not isinstance(body, str) or len(body) > BODY_LIMIT:
        return "not JSON"
    try:
        event = json.loads(body)
        if isinstance(event, dict) and event.get("Type") == "Notification" and isinstance(event.get("Message"), str):
            event = json.loads(event["Message"])
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the interpreter's stack
        return "not JSON"
    if not isinstance(event, dict):
        return "not an event"
    kind = event.get("detail-type")
    cause = NOTICES.get(kind) if isinstance(kind, str) else None  # never str() a nested value: it recurses
    if cause is None:
        return "not an EC2 interruption event"
    detail = event.get("detail")
    iid = detail.get("instance-id") if isinstance(detail, dict) else None
    if not isinstance(iid, str) or not INSTANCE_ID.fullmatch(iid):
        return "no instance id"
    at = event_time(event.get("time"))
    deadline = at + SPOT_WARNING_SECONDS if at is not None and cause is Cause.SPOT_INTERRUPTION else None
    return Interruption(handle=iid, cause=cause, deadline=deadline, receipt=str(message.get("ReceiptHandle") or ""))


def read_notices(sqs: Any, url: str, cluster: str, unreadable: Callable[[str, int], None]) -> list[Interruption]:
    """The notices on queue `url` of cluster `cluster` (at most RECEIVES receives of 10, no
    wait). They stay on the queue (invisible for its visibility timeout); messages that are not
    notices are deleted at once, logged without their content and counted (`unreadable(reason,
    n)`)."""
    notices: list[Interruption] = []
    garbage: list[str] = []
    dropped: Counter[str] = Counter()
    for _ in range(RECEIVES):
        with aws_errors("sqs:ReceiveMessage", hints=SQS_HINTS):
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
                "Messages") or []
        for message in messages:
            try:  # each message on its own: nothing in one may cost the others (a spot warning)
                notice = parse_notice(message)
            except Exception as exc:  # noqa: BLE001 - parse_notice raises nothing it knows of
                notice = f"unreadable ({type(exc).__name__})"
            if isinstance(notice, Interruption):
                if notice.receipt:
                    notices.append(notice)
                continue
            log.warning("interruption queue of cluster %s: dropping message %s: %s", cluster,
                        str(message.get("MessageId", "?"))[:100], notice)
            dropped[notice] += 1
            if message.get("ReceiptHandle"):
                garbage.append(str(message["ReceiptHandle"]))
        if len(messages) < 10:
            break
    for reason, n in dropped.items():
        unreadable(reason, n)
    if garbage:
        try:
            delete_messages(sqs, url, garbage)
        except ProviderError as exc:  # they come again and are dropped again: never worth failing a sweep
            log.warning("interruption queue of cluster %s: cannot delete %d unusable messages: %s", cluster,
                        len(garbage), exc)
    return notices


def delete_messages(sqs: Any, url: str, receipts: Iterable[str]) -> None:
    """DeleteMessageBatch, 10 a call. A receipt SQS no longer takes (expired: the message was
    received again since) is logged, not raised."""
    for chunk in chunks(list(receipts), 10):
        with aws_errors("sqs:DeleteMessageBatch", hints=SQS_HINTS):
            resp = sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)])
        failed = resp.get("Failed") or []
        if failed:
            log.warning("sqs:DeleteMessageBatch: %d of %d messages not deleted: %s", len(failed), len(chunk),
                        ", ".join(sorted({str(f.get("Code")) for f in failed})))
