"""Bad models fail loudly, once (issue 12 §5): the worker as a process, given models that break the serving
contract, and ``zeroproof train-arm`` given a budget too small to make every singular pose ⊥.

- A model whose output is invalid at load (rank 3, N and D of different shapes, a 0-d output for one row) stops
  the worker with exit code 2 and one line on stderr, at every restart, before it consumes anything: nothing is
  committed, nothing is lost, nothing reaches the outputs or the DLQ.
- A model whose invalid output is only found on a batch (its width could not be probed at load) sends those
  inputs to the DLQ as ``model_output_invalid`` (never ``wrong_feature_count``), logs it once, keeps running and
  committing; a fixed file is picked up by hot reload, and a broken one is refused (``reload_failed``) while the
  good model serves on.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.load import wait_until
from harness.worker import REPO, TopicReader, Topics, WorkerProc, committed_offsets, msg, produce, worker_env
from tests.reliability.figures import record, results_path
from tests.workers.bad_models import (
    Mismatch,
    Rank3,
    Squeezed,
    Wide40Good,
    Wide40Mismatch,
    Wide40Rank3,
    script,
)

pytestmark = pytest.mark.integration


def record_part(part: str, figures: dict[str, Any]) -> None:
    """``scenarios.bad_models[part] = figures``, keeping the section's other parts (each test writes its own)."""
    section: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError, AttributeError, KeyError, TypeError):
        section = dict(json.loads(results_path().read_text())["scenarios"]["bad_models"])
    section.pop("measured_at", None)
    section[part] = {**figures, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record("bad_models", section)


def _start_once(env: dict[str, str], timeout: float = 60.0) -> tuple[int, str, float]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    full.update(env)
    full["OMP_NUM_THREADS"] = "1"
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "workers"], env=full, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(f"the worker kept running with a bad model ({timeout:g} s): {err[-2000:]}") from None
    return p.returncode, p.stderr, time.monotonic() - t0


@pytest.mark.timeout(240)
def test_invalid_output_at_load_exits_2_with_one_line_at_every_restart(
    kafka_bootstrap: str, redis_url: str, topics: Topics, tmp_path: Path
) -> None:
    n = 20
    produce(kafka_bootstrap, topics.inputs, [(b"robot-1", msg(i, [0.1, 0.2, 0.3])) for i in range(n)])
    cases = {
        "rank3 (B, 1, 1)": (Rank3(), "shape (1, 1, 1), rank 3"),
        "N (B, 2) vs D (B, 1)": (Mismatch(), "N (1, 2) and D (1, 1) differ in shape"),
        "squeeze: 0-d for one row": (Squeezed(), "shape (), rank 0"),
    }
    figures: dict[str, Any] = {"inputs_waiting": n, "restarts_per_model": 2}
    for name, (module, words) in cases.items():
        path = script(module, tmp_path / f"{type(module).__name__}.pt")
        env = worker_env(kafka_bootstrap, redis_url, path, topics)
        runs = []
        for _ in range(2):  # "and again after every restart": the same clear line, no crash loop on a batch
            rc, err, seconds = _start_once(env)
            lines = err.strip().splitlines()
            assert rc == 2, (name, rc, err[-3000:])
            assert len(lines) == 1 and "Traceback" not in err, (name, err[-3000:])
            assert lines[0].startswith(f"zeroproof-worker: model {path}: invalid output"), lines[0]
            assert words in lines[0], lines[0]
            runs.append(seconds)
        figures[name] = {"exit_code": 2, "stderr_lines": 1, "seconds_to_exit": [round(s, 2) for s in runs]}
        figures[name]["stderr"] = lines[0].replace(str(tmp_path), "TMP")
    # nothing consumed: no commit, no output, no DLQ record; the inputs wait in Kafka for a fixed model
    assert sum(committed_offsets(kafka_bootstrap, topics).values()) == 0
    outs, dlq = TopicReader(kafka_bootstrap, topics.outputs), TopicReader(kafka_bootstrap, topics.dlq)
    try:
        outs.read_until(lambda rs: False, 2.0)
        dlq.read_until(lambda rs: False, 0.5)
        assert not outs.records and not dlq.records
    finally:
        outs.close()
        dlq.close()
    figures.update({"committed": 0, "outputs": 0, "dlq": 0})
    record_part("at_start", figures)


def _events(w: WorkerProc, name: str) -> list[dict[str, Any]]:
    return [e for e in w.events() if e.get("event") == name]


@pytest.mark.timeout(240)
def test_invalid_output_found_on_a_batch_goes_to_dlq_logged_once_and_reload_fixes_it(
    kafka_bootstrap: str, redis_url: str, topics: Topics, tmp_path: Path
) -> None:
    path = script(Wide40Mismatch(), tmp_path / "model.pt")
    wave = 20
    features = [0.25] * 40
    # the first wave is waiting when the worker starts (the input topic exists before it subscribes)
    produce(kafka_bootstrap, topics.inputs, [(b"robot-1", msg(f"a{i}", features)) for i in range(wave)])
    w = WorkerProc(worker_env(kafka_bootstrap, redis_url, path, topics), tmp_path / "w.log")
    outs, dlq = TopicReader(kafka_bootstrap, topics.outputs), TopicReader(kafka_bootstrap, topics.dlq)
    try:
        dlq.read_until(lambda rs: len(rs) >= wave, 60)
        time.sleep(1.0)  # a second wave, in other batches, after the first error line
        produce(kafka_bootstrap, topics.inputs, [(b"robot-2", msg(f"b{i}", features)) for i in range(wave)])
        dlq.read_until(lambda rs: len(rs) >= 2 * wave, 60)
        docs = dlq.json()
        assert len(docs) == 2 * wave, w.log_tail()
        assert {d["reason"] for d in docs} == {"model_output_invalid"}
        assert all("N (1, 2) and D (1, 1) differ in shape" in d["detail"] for d in docs), docs[0]
        assert wait_until(lambda: sum(committed_offsets(kafka_bootstrap, topics).values()) == 2 * wave, 30)
        assert w.proc.poll() is None, w.log_tail()
        errors = _events(w, "model_output_invalid")
        stats = TopicReader(kafka_bootstrap, topics.stats)
        try:
            stats.read_until(lambda rs: sum(json.loads(r.value)["dlq"] for r in rs) >= 2 * wave, 30)
            batches = sum(1 for st in stats.json() if st["dlq"])
        finally:
            stats.close()
        assert batches >= 2
        assert len(errors) == 1, errors  # said once (then at most once a minute), not once per batch
        assert errors[0]["level"] == "error" and errors[0]["first"] is True
        assert not outs.records

        # the operator deploys a fixed model: hot reload, and the worker serves again
        script(Wide40Good(), path)
        wait_until(lambda: bool(_events(w, "model_reloaded")), 30)
        assert _events(w, "model_reloaded"), w.log_tail()
        produce(kafka_bootstrap, topics.inputs, [(b"robot-1", msg(f"c{i}", features)) for i in range(10)])
        outs.read_until(lambda rs: len(rs) >= 10, 60)
        good_version = outs.json()[0]["model_version"]
        assert len(outs.records) == 10 and all(o["status"] == "ok" for o in outs.json())

        # a broken file replacing it is refused (probed at the 40 features being served); the good one serves on
        script(Wide40Rank3(), path)
        wait_until(lambda: bool(_events(w, "reload_failed")), 30)
        failed = _events(w, "reload_failed")
        assert failed and "invalid output on a 40-feature input" in failed[0]["error"], w.log_tail()
        produce(kafka_bootstrap, topics.inputs, [(b"robot-1", msg(f"d{i}", features)) for i in range(10)])
        outs.read_until(lambda rs: len(rs) >= 20, 60)
        assert len(outs.records) == 20 and {o["model_version"] for o in outs.json()} == {good_version}
        assert len(dlq.records) == 2 * wave
        assert w.terminate() == 0
    finally:
        w.kill()
        outs.close()
        dlq.close()
    record_part(
        "mid_run",
        {
            "model": "TorchScript, 40 features (not guessed by the load probe), N (B, 2) and D (B, 1)",
            "inputs": 2 * wave,
            "dlq_model_output_invalid": len(docs),
            "dlq_wrong_feature_count": 0,
            "batches_with_dlq": batches,
            "error_log_lines": len(errors),
            "committed": 2 * wave,
            "worker_exit_code_on_sigterm": 0,
            "after_fixed_reload_outputs": 10,
            "broken_reload_refused": True,
            "outputs_after_refused_reload_same_version": 10,
        },
    )


_OLD_POLISH = (
    "import functools, sys; import zeroproof.training.arm as a; "
    "from zeroproof.training.polish import polish_rational_head as p; "
    "a.polish_rational_head = functools.partial(p, max_resolves=0); "
    "from zeroproof.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _max_abs_d(bundle: Path) -> dict[str, float]:
    import torch

    from zeroproof.export import load_servable
    from zeroproof.models.arm import ArmIKProjective

    model = load_servable(bundle).model
    with torch.no_grad():
        return {name: float(model(x)[1].abs().max()) for name, x in ArmIKProjective.singular_sets(500).items()}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_train_arm_small_budget_checks_every_singular_set(tmp_path: Path) -> None:
    """``zeroproof train-arm --max-steps 300`` as a process: ⊥ on θ2 = 0 and ±π, exit 0. With the polish as it was
    (no re-solve, ``max_resolves=0``) the same run gives the issue's bundle (θ2 = ±π finite): it now exits 1 with
    one stderr line naming both sets, and writes no bundle."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    args = ["train-arm", "--max-steps", "300", "--seconds", "60"]
    good = tmp_path / "arm.zpb"
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "zeroproof", *args, "--out", str(good)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    seconds = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("PASS  singular_set[") == 3 and "FAIL" not in p.stdout, p.stdout
    steps = int(p.stdout.split(" SGD steps")[0].split()[-1])
    max_d = _max_abs_d(good)
    assert all(v < 1e-6 for v in max_d.values()), max_d

    bad = tmp_path / "arm-old-polish.zpb"
    q = subprocess.run(
        [sys.executable, "-c", _OLD_POLISH, *args, "--out", str(bad)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = q.stderr.strip().splitlines()
    assert q.returncode == 1, q.stdout + q.stderr
    assert len(lines) == 1 and "Traceback" not in q.stderr, q.stderr
    assert "θ2 = +π [" in lines[0] and "θ2 = −π [" in lines[0] and "θ2 = 0 [" not in lines[0], lines[0]
    assert not bad.exists() and "wrote bundle" not in q.stdout
    record_part(
        "train_arm",
        {
            "command": "zeroproof train-arm --max-steps 300 --seconds 60",
            "steps": steps,
            "seconds": round(seconds, 1),
            "exit_code": 0,
            "max_abs_D_on_singular_sets": {k: float(f"{v:.3g}") for k, v in max_d.items()},
            "tau_infer": 1e-6,
            "old_polish_exit_code": 1,
            "old_polish_bundle_written": False,
            "old_polish_stderr": lines[0].replace(str(tmp_path), "TMP"),
        },
    )
