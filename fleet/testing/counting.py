"""A Redis client that counts what it sends: round trips (one per packed send: a command, or a
whole pipeline) and commands by name. Commands a Lua script runs inside Redis count as the one
EVALSHA that ran it. `fleet bench` and the tests that assert what an operation costs use it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass
class Tally:
    round_trips: int = 0
    commands: Counter[str] = field(default_factory=Counter)  # name -> how many sent
    args: Counter[str] = field(default_factory=Counter)  # name -> arguments sent with them, in all

    def reset(self) -> None:
        self.round_trips = 0
        self.commands.clear()
        self.args.clear()

    def add(self, args: tuple[Any, ...]) -> None:
        name = _name(args)
        self.commands[name] += 1
        self.args[name] += len(args) - 1

    @property
    def total(self) -> int:
        return sum(self.commands.values())


def _name(args: tuple[Any, ...]) -> str:
    first = args[0] if args else b"?"
    text = first.decode() if isinstance(first, bytes) else str(first)
    return text.split(" ")[0].lower()


def counting_client(url: str) -> tuple[redis.Redis, Tally]:
    """A client (its own pool) whose connections add what they send to the returned tally."""
    base = redis.ConnectionPool.from_url(url).connection_class
    tally = Tally()

    class Counting(base):  # type: ignore[misc, valid-type]
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            tally.round_trips += 1
            super().send_packed_command(command, check_health)

        def send_command(self, *args: Any, **kwargs: Any) -> None:
            tally.add(args)
            super().send_command(*args, **kwargs)

        def pack_commands(self, commands: Any) -> Any:
            commands = list(commands)
            for args in commands:
                tally.add(args)
            return super().pack_commands(commands)

    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, connection_class=Counting)), tally
