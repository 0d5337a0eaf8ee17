"""Lifetimes (fleet.planners.lifetimes): which workers are past max_lifetime (the sweep marks them
outdated, the rollout replaces them) and which are idle past idle_timeout (a scale-down takes them
first). Pure, no Redis."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.model import LIVE, HandleRecord, HandleStatus
from fleet.planners import scale
from fleet.planners.lifetimes import EXPIRED_REV, expired, idle_long
from tests.kits.views import spec_of, view_of

records = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=3),
    st.builds(HandleRecord, workers=st.integers(1, 4), status=st.sampled_from(list(HandleStatus)),
              rev=st.sampled_from(["", "r1", EXPIRED_REV]), born=st.one_of(st.none(), st.floats(0, 1000)),
              idle_since=st.one_of(st.none(), st.floats(0, 1000))),
    max_size=12)


def test_past_max_lifetime_and_not_marked_yet() -> None:
    rs = {"young": HandleRecord(1, HandleStatus.RUNNING, born=950.0),
          "exact": HandleRecord(1, HandleStatus.RUNNING, born=900.0),
          "old": HandleRecord(1, HandleStatus.INITIALIZING, born=10.0),
          "marked": HandleRecord(1, HandleStatus.RUNNING, born=10.0, rev=EXPIRED_REV),
          "draining": HandleRecord(1, HandleStatus.DRAINING, born=10.0),
          "unborn": HandleRecord(1, HandleStatus.RUNNING)}
    assert expired(rs, 100.0, 1000.0) == ["old"]
    assert expired(rs, 99.0, 1000.0) == ["exact", "old"]


def test_idle_long_goes_first_on_a_scale_down() -> None:
    rec = HandleRecord(1, HandleStatus.RUNNING, idle_since=970.0)
    assert idle_long(rec, 30.0, 1000.0) and not idle_long(rec, 31.0, 1000.0) and not idle_long(rec, None, 1000.0)
    spec = spec_of(0, max_workers=5, queues=["q"], autoscale={}, idle_timeout=30.0)
    rs = {"new-idle": HandleRecord(1, HandleStatus.RUNNING, since=9.0, idle_since=990.0),
          "long-idle": HandleRecord(1, HandleStatus.RUNNING, since=1.0, idle_since=900.0)}
    view, _ = view_of(spec, rs, desired=1)
    assert scale.decide(view).retire == ("long-idle",)  # else the newest would go


@settings(max_examples=300, deadline=None)
@given(records, st.floats(1, 500), st.floats(0, 2000), st.floats(0, 500))
def test_expiry_properties(rs: dict[str, HandleRecord], lifetime: float, now: float, later: float) -> None:
    out = expired(rs, lifetime, now)
    for h in out:  # live, with a birth, older than max_lifetime, not marked before
        r = rs[h]
        assert r.status in LIVE and r.born is not None and now - r.born > lifetime and r.rev != EXPIRED_REV
    for h, r in rs.items():
        if h not in out and r.status in LIVE and r.born is not None and r.rev != EXPIRED_REV:
            assert now - r.born <= lifetime
    assert set(out) <= set(expired(rs, lifetime, now + later))  # once past it, past it for good
    assert set(expired(rs, lifetime + later, now)) <= set(out)  # a longer lifetime expires no more
