"""Alert rules and the alert state machine (inactive → pending → firing → resolved).

Why each guard exists:
- pending: a condition must hold for ``pending`` seconds of event time before it fires (one bad batch is noise);
- clear level + ``clear_for``: once firing, the value must get back past a *separate* level and stay there
  for ``clear_for`` seconds (hysteresis), so a series hovering at the threshold cannot cause an alert storm;
- minimum volume: with too few predictions in the window a rate says nothing; then nothing starts, a pending
  alert drops back to inactive, and a firing alert stays firing (an outage must not look like a recovery —
  silence is the "no data" rule's job);
- dedup: the state machine is per (rule, model version), so it emits exactly one ``firing`` per incident and
  then exactly one ``resolved``.

The ⊥-rise rule freezes its baseline while pending/firing: a sustained rise would otherwise leak into the
trailing baseline and resolve itself after a long window without anything having improved.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from monitoring.settings import MonitorSettings
from monitoring.windows import SeriesKey, WindowCounts, WindowStore

COVERAGE = "coverage_low"
GAP = "gap_rate_high"
BOTTOM_RISE = "bottom_rate_rise"
NO_DATA = "no_data"
RULES = (COVERAGE, GAP, BOTTOM_RISE, NO_DATA)
FLEET = "*"  # model_version of fleet-wide alerts ("no data")
ALERT_SCHEMA = "zeroproof.alert/1"


class State(enum.IntEnum):
    INACTIVE = 0
    PENDING = 1
    FIRING = 2


@dataclass(frozen=True, slots=True)
class Observation:
    """One evaluation of a rule: ``value`` None means "cannot judge" (below the minimum volume)."""

    value: float | None
    bad: bool
    clear: bool
    threshold: float
    clear_level: float
    volume: int
    baseline: float | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """An event for the sinks. ``started_at``: when the condition first held (pending start), event time."""

    rule: str
    state: str  # "firing" | "resolved"
    model_version: str
    value: float | None
    threshold: float
    clear_level: float
    window: str
    window_s: float
    started_at: float
    fired_at: float
    evaluated_at: float
    ended_at: float | None = None
    volume: int = 0
    baseline: float | None = None
    summary: str = ""

    @property
    def key(self) -> str:
        return f"{self.rule}/{self.model_version}"

    @property
    def alert_id(self) -> str:
        return f"{self.rule}/{self.model_version}/{self.started_at:.3f}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": ALERT_SCHEMA,
            "alert_id": self.alert_id,
            "rule": self.rule,
            "state": self.state,
            "model_version": self.model_version,
            "value": self.value,
            "threshold": self.threshold,
            "clear_level": self.clear_level,
            "window": self.window,
            "window_s": self.window_s,
            "started_at": self.started_at,
            "fired_at": self.fired_at,
            "ended_at": self.ended_at,
            "evaluated_at": self.evaluated_at,
            "volume": self.volume,
            "baseline": self.baseline,
            "summary": self.summary,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        return cls(
            rule=str(d["rule"]),
            state=str(d["state"]),
            model_version=str(d["model_version"]),
            value=None if d.get("value") is None else float(d["value"]),
            threshold=float(d["threshold"]),
            clear_level=float(d.get("clear_level", d["threshold"])),
            window=str(d.get("window", "")),
            window_s=float(d.get("window_s", 0.0)),
            started_at=float(d["started_at"]),
            fired_at=float(d.get("fired_at", d["started_at"])),
            evaluated_at=float(d.get("evaluated_at", d["started_at"])),
            ended_at=None if d.get("ended_at") is None else float(d["ended_at"]),
            volume=int(d.get("volume", 0)),
            baseline=None if d.get("baseline") is None else float(d["baseline"]),
            summary=str(d.get("summary", "")),
        )


@dataclass(slots=True)
class Tracker:
    """State of one (rule, model version)."""

    rule: str
    model_version: str
    pending: float
    clear_for: float
    state: State = State.INACTIVE
    pending_since: float | None = None
    fired_at: float | None = None
    clear_since: float | None = None
    baseline: float | None = None  # frozen baseline (⊥-rise) while pending/firing
    last: Observation | None = field(default=None)
    window: str = ""
    window_s: float = 0.0

    def step(self, obs: Observation, now: float) -> str | None:
        """Advance with one observation at event time ``now``; returns "firing"/"resolved" on a transition."""
        self.last = obs
        if self.state is State.INACTIVE:
            if obs.value is not None and obs.bad:
                self.state, self.pending_since, self.baseline = State.PENDING, now, obs.baseline
            else:
                return None
        if self.state is State.PENDING:
            if obs.value is None or not obs.bad:
                self._reset()
                return None
            assert self.pending_since is not None
            if now - self.pending_since >= self.pending:
                self.state, self.fired_at, self.clear_since = State.FIRING, now, None
                return "firing"
            return None
        # FIRING
        if obs.value is None or not obs.clear:
            self.clear_since = None
            return None
        if self.clear_since is None:
            self.clear_since = now
        if now - self.clear_since >= self.clear_for:
            self._reset()
            return "resolved"
        return None

    def _reset(self) -> None:
        self.state, self.pending_since, self.fired_at, self.clear_since, self.baseline = (
            State.INACTIVE,
            None,
            None,
            None,
            None,
        )

    def adopt(self, alert: Alert) -> None:
        """Take over a firing alert announced by an earlier monitor instance (restart recovery)."""
        self.state = State.FIRING
        self.pending_since = alert.started_at
        self.fired_at = alert.fired_at
        self.clear_since = None
        if alert.baseline is not None:
            self.baseline = alert.baseline


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    if n > 2000:  # normal approximation with continuity correction; the exact sum gets slow and adds nothing
        mu, sd = n * p, math.sqrt(n * p * (1 - p))
        return 0.5 * math.erfc((k - 0.5 - mu) / (sd * math.sqrt(2)))
    lp, lq = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
    return min(1.0, total)


def rise_p_value(short_bottom: int, short_total: int, base_bottom: int, base_total: int) -> float:
    """Exact conditional test of two Poisson rates: given all ⊥ seen in the short window and the baseline,
    how likely is it that at least ``short_bottom`` fell into the short window if the rate had not changed?
    Accounts for the noise of the baseline as well as of the short window."""
    n = short_bottom + base_bottom
    if short_total <= 0 or base_total <= 0:
        return 1.0
    return binomial_sf(short_bottom, n, short_total / (short_total + base_total))


def _fmt_window(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


class RateRule(Protocol):
    """One alert rule judged per model version at event-time ticks. A new rule is one such object in
    :data:`RATE_RULES` (and, for users who alert in Prometheus, its expression in ``promrules.py``)."""

    @property
    def name(self) -> str: ...

    @property
    def op(self) -> str:
        """Comparison shown in the summary ("coverage_low for model v: 0.85 < 0.9 over 5m")."""
        ...

    def pending(self, s: MonitorSettings) -> float:
        """Seconds the condition must hold before the rule fires."""
        ...

    def window(self, s: MonitorSettings) -> tuple[str, float]:
        """The window it judges: a label for people and its length in seconds."""
        ...

    def observe(
        self, s: MonitorSettings, store: WindowStore, version: str, now: float, frozen: float | None
    ) -> Observation:
        """The rule's value and verdict at ``now``; ``frozen`` is the baseline kept while pending or firing."""
        ...


@dataclass(frozen=True)
class CoverageLow:
    """Fires when the share accepted as-is (coverage) in the short window falls below the threshold."""

    name: str = COVERAGE
    op: str = "<"

    def pending(self, s: MonitorSettings) -> float:
        return s.coverage_pending

    def window(self, s: MonitorSettings) -> tuple[str, float]:
        return _fmt_window(s.short_window), s.short_window

    def judge(self, s: MonitorSettings, w: WindowCounts) -> Observation:
        value = w.coverage if w.total >= max(1, s.min_volume) else None
        return Observation(
            value,
            bad=value is not None and value < s.coverage_threshold,
            clear=value is not None and value >= s.coverage_clear,
            threshold=s.coverage_threshold,
            clear_level=s.coverage_clear,
            volume=w.total,
        )

    def observe(
        self, s: MonitorSettings, store: WindowStore, version: str, now: float, frozen: float | None
    ) -> Observation:
        return self.judge(s, store.window(SeriesKey(version), now, s.short_window))


@dataclass(frozen=True)
class GapRateHigh:
    """Fires when the gap rate (finite but risky) in the short window rises above the threshold."""

    name: str = GAP
    op: str = ">"

    def pending(self, s: MonitorSettings) -> float:
        return s.gap_pending

    def window(self, s: MonitorSettings) -> tuple[str, float]:
        return _fmt_window(s.short_window), s.short_window

    def judge(self, s: MonitorSettings, w: WindowCounts) -> Observation:
        value = w.gap_rate if w.total >= max(1, s.min_volume) else None
        return Observation(
            value,
            bad=value is not None and value > s.gap_threshold,
            clear=value is not None and value <= s.gap_clear,
            threshold=s.gap_threshold,
            clear_level=s.gap_clear,
            volume=w.total,
        )

    def observe(
        self, s: MonitorSettings, store: WindowStore, version: str, now: float, frozen: float | None
    ) -> Observation:
        return self.judge(s, store.window(SeriesKey(version), now, s.short_window))


@dataclass(frozen=True)
class BottomRateRise:
    """Fires when the short-window ⊥ rate is at least ``floor`` AND at least ``factor`` × the trailing baseline
    AND the rise is significant (:func:`rise_p_value` < ``bottom_rise_max_p``): at low volume a handful of ⊥ can
    clear floor and factor by chance (the long steady replay showed it). The baseline is frozen while the rule
    is pending or firing."""

    name: str = BOTTOM_RISE
    op: str = ">="

    def pending(self, s: MonitorSettings) -> float:
        return s.bottom_rise_pending

    def window(self, s: MonitorSettings) -> tuple[str, float]:
        return f"{_fmt_window(s.short_window)} vs {_fmt_window(s.baseline_window)} baseline", s.short_window

    def judge(self, s: MonitorSettings, short: WindowCounts, base: WindowCounts, frozen: float | None) -> Observation:
        if frozen is not None:
            baseline: float | None = frozen
        elif base.total >= max(1, s.baseline_min_volume):
            baseline = base.bottom_rate
        else:
            baseline = None
        value = short.bottom_rate if short.total >= max(1, s.min_volume) else None
        if baseline is None:
            value = None  # no trustworthy baseline: a "rise" cannot be judged
        b = baseline or 0.0
        threshold = max(s.bottom_rise_floor, s.bottom_rise_factor * b)
        clear_level = max(s.bottom_rise_clear_floor, s.bottom_rise_clear_factor * b)
        bad = value is not None and value >= threshold
        if bad:
            if frozen is None:
                p_value = rise_p_value(short.bottom, short.total, base.bottom, base.total)
            else:  # judged against the rate frozen at the start, not the baseline window it may have leaked into
                p_value = binomial_sf(short.bottom, short.total, frozen)
            bad = p_value < s.bottom_rise_max_p
        return Observation(
            value,
            bad=bad,
            clear=value is not None and value < clear_level,
            threshold=threshold,
            clear_level=clear_level,
            volume=short.total,
            baseline=baseline,
        )

    def observe(
        self, s: MonitorSettings, store: WindowStore, version: str, now: float, frozen: float | None
    ) -> Observation:
        key = SeriesKey(version)
        short = store.window(key, now, s.short_window)
        base = store.window(key, now, s.baseline_window, offset=s.short_window)
        return self.judge(s, short, base, frozen)


#: The rules judged per model version, in evaluation order.
RATE_RULES: tuple[RateRule, ...] = (CoverageLow(), GapRateHigh(), BottomRateRise())


class RuleEngine:
    """Evaluates the rate rules for every model version at event-time ticks, and "no data" at wall-clock ticks."""

    def __init__(self, settings: MonitorSettings, rules: Sequence[RateRule] = RATE_RULES) -> None:
        self.s = settings
        self.rules = {r.name: r for r in rules}
        self.trackers: dict[tuple[str, str], Tracker] = {}

    def tracker(self, rule: str, model_version: str) -> Tracker:
        t = self.trackers.get((rule, model_version))
        if t is None:
            if rule == NO_DATA:
                pending, clear_for = 0.0, 0.0
            else:
                pending, clear_for = self.rules[rule].pending(self.s), self.s.clear_for
            t = self.trackers[(rule, model_version)] = Tracker(rule, model_version, pending, clear_for)
        return t

    # -- evaluation ---------------------------------------------------------------------------------------
    def evaluate(self, store: WindowStore, now: float) -> list[Alert]:
        """Evaluate the rate rules at event time ``now`` (a multiple of the evaluation interval)."""
        alerts: list[Alert] = []
        versions = set(store.model_versions()) | {v for (r, v) in self.trackers if r != NO_DATA}
        for version in sorted(versions):
            for rule in self.rules.values():
                tr = self.tracker(rule.name, version)
                frozen = tr.baseline if tr.state is not State.INACTIVE else None
                obs = rule.observe(self.s, store, version, now, frozen)
                label, seconds = rule.window(self.s)
                alerts += self._step(rule.name, version, obs, now, label, seconds)
        return alerts

    def evaluate_no_data(self, last_data: float, now: float) -> list[Alert]:
        """``last_data``: newest event time seen (or the monitor's start); ``now``: the (injectable) wall clock."""
        silent = max(0.0, now - last_data)
        obs = Observation(
            silent,
            bad=silent > self.s.no_data_after,
            clear=silent <= self.s.no_data_after,
            threshold=self.s.no_data_after,
            clear_level=self.s.no_data_after,
            volume=0,
        )
        return self._step(NO_DATA, FLEET, obs, now, _fmt_window(self.s.no_data_after), self.s.no_data_after)

    def _step(self, rule: str, version: str, obs: Observation, now: float, window: str, window_s: float) -> list[Alert]:
        tr = self.tracker(rule, version)
        tr.window, tr.window_s = window, window_s
        started, fired = tr.pending_since, tr.fired_at
        change = tr.step(obs, now)
        if change is None:
            return []
        if change == "firing":
            started, fired = tr.pending_since, tr.fired_at
        assert started is not None
        assert fired is not None
        return [self.make_alert(tr, change, obs, now, window, window_s, started, fired)]

    def make_alert(
        self,
        tr: Tracker,
        state: str,
        obs: Observation,
        now: float,
        window: str,
        window_s: float,
        started: float,
        fired: float,
    ) -> Alert:
        rule, version = tr.rule, tr.model_version
        val = "n/a" if obs.value is None else f"{obs.value:.4g}"
        if rule == NO_DATA:
            summary = f"no stats from any worker for {val}s (limit {obs.threshold:g}s)"
        else:
            summary = f"{rule} for model {version}: {val} {self.rules[rule].op} {obs.threshold:.4g} over {window}"
        if state == "resolved":
            summary = f"resolved: {summary.split(':', 1)[0]} back past clear level {obs.clear_level:.4g} ({val})"
        return Alert(
            rule=rule,
            state=state,
            model_version=version,
            value=obs.value,
            threshold=obs.threshold,
            clear_level=obs.clear_level,
            window=window,
            window_s=window_s,
            started_at=started,
            fired_at=fired,
            evaluated_at=now,
            ended_at=now if state == "resolved" else None,
            volume=obs.volume,
            baseline=obs.baseline if rule == BOTTOM_RISE else None,
            summary=summary,
        )

    def firing(self) -> list[Tracker]:
        return [t for t in self.trackers.values() if t.state is State.FIRING]

    def retire(self, version: str, now: float) -> list[Alert]:
        """A model version without data for the whole horizon while others still report has been replaced:
        its firing alerts resolve (nothing left to judge, and "no data" covers a fleet gone silent), and its
        state is dropped so that memory does not grow with every rollout."""
        alerts: list[Alert] = []
        for key in [k for k in self.trackers if k[1] == version]:
            tr = self.trackers.pop(key)
            if tr.state is State.FIRING and tr.pending_since is not None and tr.fired_at is not None:
                last = tr.last or Observation(None, False, False, 0.0, 0.0, 0)
                obs = Observation(None, False, True, last.threshold, last.clear_level, 0, last.baseline)
                alert = self.make_alert(tr, "resolved", obs, now, tr.window, tr.window_s, tr.pending_since, tr.fired_at)
                alerts.append(replace(alert, summary=f"resolved: model version {version} retired (no data)"))
        return alerts
