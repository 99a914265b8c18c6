"""End-of-run report for ``zeroproof run``: counts and rates, alerts, review queue, DLQ, and a PNG plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from embedded.options import StackOptions, Timeline


def count_outputs(bootstrap: str, expected: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """Read zeroproof.outputs and zeroproof.dlq from the start until ``expected`` outputs are seen (or timeout)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        "zeroproof.outputs",
        "zeroproof.dlq",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=50,
    )
    status: Counter[str] = Counter()
    action: Counter[str] = Counter()
    controllers: Counter[str] = Counter()
    dlq_reasons: Counter[str] = Counter()
    ids: set[str] = set()
    outputs = 0
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(ids) < expected:
            for tp, records in consumer.poll(timeout_ms=300).items():
                for rec in records:
                    msg = orjson.loads(rec.value)
                    if tp.topic == "zeroproof.dlq":
                        dlq_reasons[str(msg.get("reason", "?")).split(":")[0]] += 1
                        continue
                    outputs += 1
                    ids.add(str(msg.get("id")))
                    status[str(msg.get("status"))] += 1
                    action[str(msg.get("action"))] += 1
                    if msg.get("fallback_controller"):
                        controllers[str(msg["fallback_controller"])] += 1
    finally:
        consumer.close()
    return {
        "outputs": outputs,
        "distinct_ids": len(ids),
        "expected": expected,
        "status": dict(status),
        "action": dict(action),
        "fallback_controllers": dict(controllers),
        "dlq_reasons": dict(dlq_reasons),
    }


def review_queue(redis_url: str) -> list[dict[str, Any]]:
    """Pending ⊥ review records, through the same CLI a reviewer uses."""
    env = {**os.environ, "ZEROPROOF_REDIS_URL": redis_url}
    proc = subprocess.run(
        [sys.executable, "-m", "zeroproof", "review", "list", "--json", "--limit", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    records = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def build_report(
    options: StackOptions,
    produced: dict[str, int],
    outputs: dict[str, Any],
    timeline: Timeline,
    redis_url: str,
    bootstrap: str,
) -> dict[str, Any]:
    total = max(1, sum(outputs["status"].values()))
    rates = {k: outputs["status"].get(k, 0) / total for k in ("ok", "gap", "bottom")}
    fired = [a for a in timeline.alerts if a.get("state") == "firing"]
    resolved = [a for a in timeline.alerts if a.get("state") == "resolved"]
    reviews = review_queue(redis_url)
    malformed = sum(v for k, v in produced.items() if k.startswith("malformed"))
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(produced.items()))
    lines = [
        "",
        "=== zeroproof run: report ===",
        f"produced         {sum(produced.values())} events ({kinds})",
        f"outputs          {outputs['outputs']} for {outputs['distinct_ids']} distinct inputs "
        f"(expected {outputs['expected']} valid inputs)",
        f"coverage         {rates['ok']:.4f}  (accepted as-is)",
        f"gap rate         {rates['gap']:.4f}",
        f"⊥ rate           {rates['bottom']:.4f}",
        f"actions          {outputs['action']}  fallback controllers {outputs['fallback_controllers']}",
        f"DLQ              {sum(outputs['dlq_reasons'].values())} records (malformed produced: {malformed}) "
        f"reasons {outputs['dlq_reasons']}",
        f"alerts           {len(fired)} fired, {len(resolved)} resolved: "
        + ", ".join(f"{a.get('rule')}:{a.get('state')}@{a.get('_seen_at', 0):.0f}s" for a in timeline.alerts),
        f"review queue     {len(reviews)} pending ⊥ inputs (saved to review-queue.jsonl); against a live Redis: "
        "`ZEROPROOF_REDIS_URL=redis://... zeroproof review list | show ID | ack ID | replay ID`",
    ]
    return {
        "options": {k: str(v) for k, v in vars(options).items()},
        "produced": produced,
        "outputs": outputs,
        "rates": rates,
        "alerts": timeline.alerts,
        "alerts_fired": len(fired),
        "alerts_resolved": len(resolved),
        "review_queue": {"pending": len(reviews), "sample": reviews[:5], "records": reviews},
        "timeline": timeline.points,
        "summary_text": "\n".join(lines),
        "bootstrap": bootstrap,
    }


def plot_timeline(timeline: Timeline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    t = [p["t"] for p in timeline.points]
    ax.plot(t, [p["coverage"] for p in timeline.points], label="coverage (accepted as-is)", color="tab:green")
    ax.plot(t, [p["gap_rate"] for p in timeline.points], label="gap rate", color="tab:orange")
    ax.plot(t, [p["bottom_rate"] for p in timeline.points], label="⊥ rate", color="tab:red")
    ax.axhline(0.9, color="tab:green", linestyle=":", linewidth=1, label="coverage threshold 0.90")
    ax.axhline(0.05, color="tab:orange", linestyle=":", linewidth=1, label="gap threshold 0.05")
    for k, a in enumerate(timeline.alerts):
        firing = a.get("state") == "firing"
        color = "red" if firing else "blue"
        x = a.get("_seen_at", 0)
        ax.axvline(x, color=color, linestyle="--", linewidth=1)
        # staggered so that alerts a second apart stay readable
        ax.annotate(
            f"{a.get('rule')} {a.get('state')}",
            (x, 0.82 - 0.12 * (k % 6)),
            fontsize=7,
            color=color,
            xytext=(3, 0),
            textcoords="offset points",
        )
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("rate (per second of traffic)")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title("zeroproof run: coverage, gap and ⊥ rates with alerts (red: firing, blue: resolved)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], timeline: Timeline, out_dir: Path) -> dict[str, Path]:
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "plot": out_dir / "rates.png"}
    records = report["review_queue"].pop("records", [])
    (out_dir / "review-queue.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    plot_timeline(timeline, paths["plot"])
    paths["markdown"].write_text(
        "# zeroproof run\n\n```\n" + report["summary_text"].strip() + "\n```\n\n![rates](rates.png)\n"
    )
    return paths
