from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import settings as settings_h
from hypothesis import strategies as st

from harness.monitor import fast_settings
from monitoring.rules import (
    BOTTOM_RISE,
    COVERAGE,
    FLEET,
    NO_DATA,
    Alert,
    BottomRateRise,
    CoverageLow,
    GapRateHigh,
    Observation,
    RuleEngine,
    State,
    Tracker,
    binomial_sf,
    rise_p_value,
)
from monitoring.settings import MonitorSettings
from monitoring.windows import WindowCounts

pytestmark = pytest.mark.unit


def obs(value: float | None, bad: bool, clear: bool) -> Observation:
    return Observation(value, bad=bad, clear=clear, threshold=0.9, clear_level=0.92, volume=1000)


BAD = obs(0.8, bad=True, clear=False)
BETWEEN = obs(0.91, bad=False, clear=False)
GOOD = obs(0.95, bad=False, clear=True)
UNKNOWN = obs(None, bad=False, clear=False)


def run(tr: Tracker, seq: list[tuple[float, Observation]]) -> list[tuple[float, str]]:
    out = []
    for t, o in seq:
        change = tr.step(o, t)
        if change:
            out.append((t, change))
    return out


def test_fires_only_after_pending_and_once() -> None:
    tr = Tracker("r", "v", pending=30, clear_for=30)
    events = run(tr, [(t, BAD) for t in range(0, 200, 5)])
    assert events == [(30, "firing")]
    assert tr.state is State.FIRING
    assert tr.pending_since == 0


def test_pending_resets_when_condition_breaks() -> None:
    tr = Tracker("r", "v", pending=30, clear_for=30)
    seq = [(0, BAD), (10, BAD), (20, GOOD), (25, BAD), (50, BAD), (55, BAD)]
    assert run(tr, seq) == [(55, "firing")]


def test_hysteresis_and_clear_for() -> None:
    tr = Tracker("r", "v", pending=0, clear_for=20)
    seq = [(0, BAD), (5, BETWEEN), (10, BETWEEN), (100, BETWEEN), (105, GOOD), (115, GOOD), (120, BAD), (125, GOOD)]
    seq += [(t, GOOD) for t in range(130, 160, 5)]
    # Between threshold and clear level it stays firing; a clear streak interrupted by a bad value restarts.
    assert run(tr, seq) == [(0, "firing"), (145, "resolved")]


def test_low_volume_neither_fires_nor_resolves() -> None:
    tr = Tracker("r", "v", pending=10, clear_for=0)
    assert run(tr, [(0, BAD), (5, UNKNOWN), (10, BAD), (15, BAD)]) == []  # pending dropped at 5
    assert run(tr, [(20, BAD)]) == [(20, "firing")]
    assert run(tr, [(t, UNKNOWN) for t in range(25, 500, 5)]) == []
    assert tr.state is State.FIRING


def test_flapping_value_gives_at_most_one_incident() -> None:
    tr = Tracker("r", "v", pending=30, clear_for=30)
    # The raw value alternates across the threshold every 10 s: never bad for 30 s in a row.
    seq = [(t, BAD if (t // 10) % 2 == 0 else BETWEEN) for t in range(0, 3600, 5)]
    assert run(tr, seq) == []


def test_adopt_keeps_start_time() -> None:
    tr = Tracker("r", "v", pending=30, clear_for=0)
    a = Alert(COVERAGE, "firing", "v", 0.8, 0.9, 0.92, "1m", 60, started_at=100, fired_at=130, evaluated_at=130)
    tr.adopt(a)
    assert tr.state is State.FIRING
    assert run(tr, [(500, BETWEEN), (505, GOOD)]) == [(505, "resolved")]


def test_coverage_observation_guards_volume(settings: MonitorSettings) -> None:
    low = CoverageLow().judge(settings, WindowCounts(total=199, bottom=199))
    assert low.value is None
    assert not low.bad
    o = CoverageLow().judge(settings, WindowCounts(total=1000, bottom=60, gap=50))
    assert o.value == pytest.approx(0.89)
    assert o.bad
    assert not o.clear
    assert CoverageLow().judge(settings, WindowCounts(total=1000, bottom=40, gap=40)).clear
    g = GapRateHigh().judge(settings, WindowCounts(total=1000, gap=51))
    assert g.bad
    assert GapRateHigh().judge(settings, WindowCounts(total=1000, gap=40)).clear


def test_bottom_rise_needs_factor_and_floor(settings: MonitorSettings) -> None:
    base = WindowCounts(total=10_000, bottom=50)  # 0.5 %
    # 0.5 % → 5 %: ten-fold and above the 2 % floor.
    assert BottomRateRise().judge(settings, WindowCounts(total=1000, bottom=50), base, None).bad
    # 0.5 % → 1.8 %: more than 3x but under the floor.
    assert not BottomRateRise().judge(settings, WindowCounts(total=1000, bottom=18), base, None).bad
    # 10 % → 25 %: above the floor but not 3x.
    high = WindowCounts(total=10_000, bottom=1000)
    assert not BottomRateRise().judge(settings, WindowCounts(total=1000, bottom=250), high, None).bad
    # Too small a baseline: cannot judge a rise.
    assert (
        BottomRateRise().judge(settings, WindowCounts(total=1000, bottom=500), WindowCounts(total=10), None).value
        is None
    )
    # A frozen baseline overrides the (contaminated) current one.
    frozen = BottomRateRise().judge(settings, WindowCounts(total=1000, bottom=50), high, 0.005)
    assert frozen.bad
    assert frozen.baseline == 0.005


def test_no_data_rule() -> None:
    eng = RuleEngine(fast_settings(no_data_after=60))
    assert eng.evaluate_no_data(1000, 1059) == []
    fired = eng.evaluate_no_data(1000, 1061)
    assert [(a.rule, a.state, a.model_version) for a in fired] == [(NO_DATA, "firing", FLEET)]
    assert eng.evaluate_no_data(1000, 1200) == []  # dedup
    resolved = eng.evaluate_no_data(1190, 1200)
    assert [a.state for a in resolved] == ["resolved"]
    assert resolved[0].started_at == 1061


def test_alert_dict_roundtrip() -> None:
    a = Alert(BOTTOM_RISE, "firing", "v9", 0.05, 0.02, 0.01, "1m vs 9m baseline", 60, 10, 40, 40, baseline=0.005)
    d = a.to_dict()
    for field in ("rule", "state", "value", "threshold", "window", "model_version", "started_at"):
        assert field in d
    assert Alert.from_dict(d) == a


def test_binomial_tail_exact_and_approximate() -> None:
    from math import comb

    exact = sum(comb(30, i) * 0.1**i * 0.9 ** (30 - i) for i in range(7, 31))
    assert binomial_sf(7, 30, 0.1) == pytest.approx(exact, rel=1e-9)
    assert binomial_sf(0, 30, 0.1) == 1.0
    assert binomial_sf(31, 30, 0.1) == 0.0
    # Normal approximation branch, against the exact sum at a size where both are feasible.
    n, p, k = 2500, 0.02, 65
    exact_big = sum(
        math.exp(math.log(comb(n, i)) + i * math.log(p) + (n - i) * math.log1p(-p)) for i in range(k, n + 1)
    )
    assert binomial_sf(k, n, p) == pytest.approx(exact_big, rel=0.15)


def test_rise_significance_guards_low_volume(settings: MonitorSettings) -> None:
    base = WindowCounts(total=3300, bottom=16)  # ~0.5 %
    # 7 ⊥ of 300 clears the 2 % floor and 3x the baseline, but is not unusual enough to page anyone.
    assert rise_p_value(7, 300, 16, 3300) > settings.bottom_rise_max_p
    assert not BottomRateRise().judge(settings, WindowCounts(total=300, bottom=7), base, None).bad
    # 15 of 300 (5 %) is.
    assert rise_p_value(15, 300, 16, 3300) < settings.bottom_rise_max_p
    assert BottomRateRise().judge(settings, WindowCounts(total=300, bottom=15), base, None).bad


@settings_h(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["bad", "between", "good", "unknown"]), min_size=1, max_size=300),
    st.sampled_from([0, 10, 30]),
    st.sampled_from([0, 10, 30]),
)
def test_state_machine_invariants(seq: list[str], pending: int, clear_for: int) -> None:
    """For any observation sequence (5 s apart): firing and resolved alternate, firing needs the bad
    condition throughout the pending duration, resolving needs the clear condition throughout clear_for."""
    kinds = {"bad": BAD, "between": BETWEEN, "good": GOOD, "unknown": UNKNOWN}
    tr = Tracker("r", "v", pending=pending, clear_for=clear_for)
    events = run(tr, [(i * 5, kinds[k]) for i, k in enumerate(seq)])
    states = [e for _, e in events]
    assert states == ["firing", "resolved"] * (len(states) // 2) + ["firing"] * (len(states) % 2)
    for t, e in events:
        i = t // 5
        if e == "firing":
            need = pending // 5
            assert i - need >= 0
            assert all(seq[j] == "bad" for j in range(i - need, i + 1))
        else:
            need = clear_for // 5
            assert all(seq[j] == "good" for j in range(i - need, i + 1))


def test_a_new_rule_is_one_object(settings: MonitorSettings) -> None:
    """The seam: a rule written outside the module (here: too many rejected outputs) joins the engine as one
    object, with its own pending time, window and summary, and gets the same state machine and dedup."""
    from dataclasses import dataclass

    from monitoring.rules import RATE_RULES
    from monitoring.windows import SeriesKey, WindowStore
    from service.wire import Counts, StatsMessage

    @dataclass(frozen=True)
    class RejectedHigh:
        name: str = "rejected_rate_high"
        op: str = ">"

        def pending(self, s: MonitorSettings) -> float:
            return 10.0

        def window(self, s: MonitorSettings) -> tuple[str, float]:
            return "1m", s.short_window

        def observe(
            self, s: MonitorSettings, store: WindowStore, version: str, now: float, frozen: float | None
        ) -> Observation:
            w = store.window(SeriesKey(version), now, s.short_window)
            rate = w.rejected / w.total if w.total else None
            bad = rate is not None and rate > 0.1
            return Observation(rate, bad=bad, clear=not bad, threshold=0.1, clear_level=0.1, volume=w.total)

    engine = RuleEngine(settings, rules=(*RATE_RULES, RejectedHigh()))
    store = WindowStore(settings.bucket, 3600.0)
    fired = []
    for t in range(0, 40, 5):
        store.add(
            StatsMessage(
                worker_id="w",
                model_version="v",
                tau_infer=1e-6,
                tau_train=1e-4,
                window_start=1000.0 + t,
                window_end=1000.0 + t + 1,
                counts=Counts(total=500, rejected=100),
            )
        )
        fired += [a for a in engine.evaluate(store, 1000.0 + t + 5) if a.rule == "rejected_rate_high"]
    assert [a.state for a in fired] == ["firing"]
    assert fired[0].summary == "rejected_rate_high for model v: 0.2 > 0.1 over 1m"
