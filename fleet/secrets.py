"""Secret references: `container.secrets = { NAME = "ref" }`.

A worker gets the secret's value in its environment variable NAME; Fleet keeps only the reference.
Where a value is read depends on the scheme of the reference, and each provider serves only some
schemes (`Provider.secret_schemes`; `fleet.config.parse_config` refuses the others):

  ssm:/path/name, ssm:arn:...:parameter/...      AWS SSM Parameter Store (SecureString decrypted)
  secretsmanager:name, secretsmanager:arn:...     AWS Secrets Manager (its SecretString)
  gcp:projects/P/secrets/S/versions/V            GCP Secret Manager (V: a number or "latest")
  env:NAME                                       the control plane's environment variable NAME
  file:/absolute/path                            a file on the control plane's host

Cloud references are fetched by the worker's own VM or task at boot, with its own identity (an
instance role, a task execution role, a service account): the value never passes through Fleet.
`env:` and `file:` are read by the control plane at launch (`resolve_local`) and handed straight
to the process or container: never stored, logged, or put in an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fleet.errors import PermanentProviderError

#: every scheme a reference may use
SCHEMES = ("ssm", "secretsmanager", "gcp", "env", "file")
#: the schemes the control plane resolves itself (local and docker providers)
LOCAL_SCHEMES = frozenset({"env", "file"})
AWS_SCHEMES = frozenset({"ssm", "secretsmanager"})
GCP_SCHEMES = frozenset({"gcp"})

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_PATTERNS = {
    "ssm": re.compile(r"arn:aws[a-z-]*:ssm:[a-z0-9-]+:\d{12}:parameter/[A-Za-z0-9_.\-/]{1,2048}"
                      r"|/?[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*"),
    "secretsmanager": re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@\-]{1,512}"
                                 r"|[A-Za-z0-9/_+=.@\-]{1,512}"),
    "gcp": re.compile(r"projects/[a-z0-9][a-z0-9.:\-]{0,62}/secrets/[A-Za-z0-9_\-]{1,255}/versions/(latest|[1-9]\d*)"),
    "env": ENV_NAME,
    "file": re.compile(r"/[^\0]{0,4095}"),
}
_FORMS = {
    "ssm": "ssm:/parameter/name or ssm:<parameter ARN>",
    "secretsmanager": "secretsmanager:<secret name or ARN>",
    "gcp": "gcp:projects/<project>/secrets/<secret>/versions/<number or latest>",
    "env": "env:<NAME of a control-plane environment variable>",
    "file": "file:/absolute/path",
}
#: values shorter than this are not searched for in error texts (they would blank out ordinary words)
MIN_REDACTED = 4


@dataclass(frozen=True)
class SecretRef:
    """A parsed reference: `scheme` (one of SCHEMES) and what it names (`target`)."""

    scheme: str
    target: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}"


def parse_ref(ref: str) -> SecretRef:
    """The reference `ref` parsed; ValueError (saying which forms are valid) if it is not one."""
    scheme, sep, target = ref.partition(":")
    if not sep or scheme not in _PATTERNS:
        raise ValueError(f"{ref[:80]!r} is not a secret reference: start it with one of "
                         f"{', '.join(s + ':' for s in SCHEMES)}")
    if not _PATTERNS[scheme].fullmatch(target):
        raise ValueError(f"{ref[:80]!r} is not a valid {scheme} reference: write {_FORMS[scheme]}")
    return SecretRef(scheme, target)


def check_ref(ref: str) -> str:
    """`ref` if it is a valid reference (pydantic's validator of `container.secrets` values)."""
    parse_ref(ref)
    return ref


def check_name(name: str) -> str:
    """`name` if it is a usable environment variable name that Fleet does not reserve."""
    if not ENV_NAME.fullmatch(name):
        raise ValueError(f"secret name {name[:80]!r} is not an environment variable name "
                         "(letters, digits and _, not starting with a digit)")
    if name.startswith("FLEET_"):
        raise ValueError(f"secret name {name!r}: the FLEET_ prefix is Fleet's own")
    return name


def schemes(secrets: Mapping[str, str]) -> set[str]:
    """The schemes `secrets` (valid references) use."""
    return {parse_ref(ref).scheme for ref in secrets.values()}


def resolve_local(cluster: str, secrets: Mapping[str, str]) -> dict[str, str]:
    """The values of `env:` and `file:` references, read now, by name. A missing variable or an
    unreadable file is a PermanentProviderError naming the secret and its reference, never a
    value. References of other schemes are refused (config validation keeps them out)."""
    values: dict[str, str] = {}
    for name, raw in secrets.items():
        ref = parse_ref(raw)
        where = f"cluster {cluster!r}: container.secrets.{name} ({ref})"
        if ref.scheme == "env":
            value = os.environ.get(ref.target)
            if value is None:
                raise PermanentProviderError(f"{where}: the control plane has no environment variable "
                                             f"{ref.target}: set it, or fix the reference")
        elif ref.scheme == "file":
            try:
                value = Path(ref.target).read_text(encoding="utf-8").removesuffix("\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise PermanentProviderError(f"{where}: cannot read the file: {reason}") from None
        else:
            raise PermanentProviderError(f"{where}: this provider cannot read {ref.scheme} secrets")
        if "\0" in value:
            raise PermanentProviderError(f"{where}: the value holds a NUL byte, which no environment can carry")
        values[name] = value
    return values


def redact(text: str, values: Iterable[str]) -> str:
    """`text` with every occurrence of each of `values` (of MIN_REDACTED characters or more)
    replaced by `***`, longest first (so that one value inside another leaves nothing)."""
    for value in sorted({v for v in values if len(v) >= MIN_REDACTED}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


E = TypeVar("E", bound=BaseException)


def scrub(exc: E, values: Iterable[str]) -> E:
    """`exc` with every one of `values` cut out of its message and cause (in place: its class,
    other arguments and traceback stay), so an error a launch raises never carries the value of
    an environment variable or a secret into events, logs or a task result."""
    hidden = [v for v in values if len(v) >= MIN_REDACTED]
    if not hidden:
        return exc
    exc.args = tuple(redact(a, hidden) if isinstance(a, str) else a for a in exc.args)
    for attr in ("message", "cause"):
        if isinstance(getattr(exc, attr, None), str):
            setattr(exc, attr, redact(getattr(exc, attr), hidden))
    chained, seen = exc.__cause__ or exc.__context__, 0
    while chained is not None and seen < 8:
        if redact(str(chained), hidden) != str(chained):  # a traceback would print it: cut the chain
            exc.__cause__, exc.__context__, exc.__suppress_context__ = None, None, True
            break
        chained, seen = chained.__cause__ or chained.__context__, seen + 1
    return exc
