"""Why a cluster does not launch, in one wording (`fleet.reasons`): `fleet status` and the
console show the lines `not_launching` gives for the same holds, read from a real Redis, and a
pool's `skipped` keeps the words docs/pools.md lists."""

from __future__ import annotations

import html
import re
import textwrap
from pathlib import Path

import redis
from click.testing import CliRunner

from fleet.cli import main
from fleet.config import load_config
from fleet.console.app import create_app
from fleet.control.queries import Queries
from fleet.holds import Holds
from fleet.reasons import WORDS, not_launching, why
from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, fid: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(textwrap.dedent(f"""
        [fleet]
        id = "{fid}"
        [clusters.web]
        provider = "memory"
        max_workers = 4
        [clusters.web.container]
        command = ["worker"]
        [clusters.duo]
        max_workers = 4
        [clusters.duo.container]
        command = ["worker"]
        [[clusters.duo.pools]]
        name = "spot"
        provider = "memory"
        [[clusters.duo.pools]]
        name = "od"
        provider = "local"
        """))
    return path


def _plain(text: str) -> str:
    """`text` with its seconds (they count down between two reads) and its wrapping left out."""
    return re.sub(r"\d+", "N", " ".join(text.split()))


def test_status_and_the_console_say_why_in_the_same_words(tmp_path: Path, fid: str, r: redis.Redis) -> None:
    path = _config(tmp_path, fid)
    config = load_config(path)
    holds = Holds(r, fid)
    spec = config.spec("web")
    holds.set_error("web", "no such image", spec.fingerprint)
    holds.set_at_quota("web", 300)
    holds.set_no_capacity("web", 300)
    holds.hold_provider("memory", 300)
    holds.hold_unresponsive("web", 300)
    holds.start_recovery(300)
    holds.set_no_capacity("duo", 300, pool="spot")

    queries = Queries(config, r)
    status = queries.status("web")
    lines = [reason.text for reason in not_launching(status)]
    assert lines[0] == "error: no such image"
    assert [_plain(line) for line in lines[1:]] == [
        "at quota for N s more", "no capacity for N s more", "rate-limited for N s more",
        "provider not answering: calls held for N s", "recovering after a loss of Redis data for N s more"]
    duo = queries.status("duo")
    assert [p["skipped"] for p in duo["pools"]] == ["no capacity", "recovering from a loss of Redis data"]
    assert "pool spot skipped: no capacity" in [reason.text for reason in not_launching(duo)]

    cli = CliRunner().invoke(main, ["--config", str(path), "status", "web"], env={"FLEET_REDIS_URL": REDIS_URL})
    assert cli.exit_code == 0, cli.output
    for line in lines:
        assert _plain(line) in _plain(cli.output), (line, cli.output)

    page = create_app(config, REDIS_URL).test_client().get("/clusters/web")
    shown = [html.unescape(m) for m in re.findall(r'class="flash warn reason">([^<]*)<', page.text)]
    assert [_plain(line) for line in shown] == [_plain(line) for line in lines], page.text


def test_a_pool_skipped_says_what_docs_pools_md_lists() -> None:
    text = (ROOT / "docs" / "pools.md").read_text()
    table = text[text.index("| skipped because |"):text.index("A launch that fails in a pool")]
    listed = set(re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE))
    said = {why(kind) for kind in ("at_quota", "no_capacity", "at_budget", "rate_limited", "unresponsive", "full")}
    assert said | {why("error", detail="...")} == listed
    assert set(WORDS) == {"at_quota", "no_capacity", "at_budget", "rate_limited", "unresponsive", "recovering",
                          "full"}
