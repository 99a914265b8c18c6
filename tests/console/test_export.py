"""Export of reviewed inputs: JSONL as `zeroproof review show` prints records, and a dataset file that
`zeroproof calibrate` and `zeroproof validate` read as it is."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from console.export import ExportError, dataset, reviewed_sources
from harness.worker import REPO
from service.review import RedisReviewStore, ReviewFilter
from tests.console.conftest import AppFactory, record_item
from zeroproof.training.validation import load_heldout

pytestmark = pytest.mark.integration
SOURCE = "zeroproof.inputs:0:{}"


def reviewed(store: RedisReviewStore) -> None:
    store.record_batch(
        [
            record_item(1, features=[0.5], bottom=[True]),
            record_item(2, features=[None], bottom=[True]),
            record_item(3, features=[0.49], bottom=[True], entity="arm-2"),
            record_item(4, features=[0.5], bottom=[True]),  # no verdict: not exported
        ]
    )
    store.set_verdict(SOURCE.format(1), "singular_as_expected", by="t")
    store.set_verdict(SOURCE.format(2), "sensor_fault", by="t", note="dropout")
    store.set_verdict(SOURCE.format(3), "model_defect", by="t")
    store.ack(SOURCE.format(2), by="t")


def test_the_dataset_holds_features_verdicts_and_the_targets_they_imply(
    store: RedisReviewStore, tmp_path: Path
) -> None:
    reviewed(store)
    sources = reviewed_sources(store, ReviewFilter(), ["pending", "acked"])
    assert sorted(sources) == [SOURCE.format(i) for i in (1, 2, 3)]
    path = tmp_path / "reviewed.npz"
    path.write_bytes(dataset(store, sources))
    x, y = load_heldout(path)  # what validate and calibrate call
    with np.load(path, allow_pickle=False) as data:
        order = [str(s) for s in data["source"]]
        verdict = dict(zip(order, (str(v) for v in data["verdict"]), strict=True))
        names = [str(n) for n in data["verdict_names"]]
        codes = dict(zip(order, (names[c] for c in data["verdict_code"]), strict=True))
    assert (
        verdict
        == codes
        == {
            SOURCE.format(1): "singular_as_expected",
            SOURCE.format(2): "sensor_fault",
            SOURCE.format(3): "model_defect",
        }
    )
    rows = {s: i for i, s in enumerate(order)}
    assert x.shape == (3, 1) and y is not None and y.shape == (3, 1)
    assert x[rows[SOURCE.format(1)], 0].item() == 0.5 and math.isnan(x[rows[SOURCE.format(2)], 0].item())
    assert y[rows[SOURCE.format(1)], 0].item() == math.inf  # reviewed as a genuine singularity
    assert math.isnan(y[rows[SOURCE.format(3)], 0].item())  # no known value
    # only the chosen verdict, state or entity
    assert reviewed_sources(store, ReviewFilter(verdict="sensor_fault"), ["pending", "acked"]) == [SOURCE.format(2)]
    assert reviewed_sources(store, ReviewFilter(entity="arm-2"), ["pending"]) == [SOURCE.format(3)]
    with pytest.raises(ExportError, match="nothing to export"):
        dataset(store, [SOURCE.format(4)])


def test_one_dataset_never_mixes_feature_counts(store: RedisReviewStore) -> None:
    store.record_batch([record_item(1, features=[0.5]), record_item(2, features=[0.5, 1.0], model="wide")])
    for s in (1, 2):
        store.set_verdict(SOURCE.format(s), "other", by="t")
    with pytest.raises(ExportError, match="filter by one model version"):
        dataset(store, reviewed_sources(store, ReviewFilter(), ["pending"]))
    assert dataset(store, reviewed_sources(store, ReviewFilter(model_version="wide"), ["pending"]))


def run_zeroproof(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    return subprocess.run(
        [sys.executable, "-m", "zeroproof", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_downloads_load_in_calibrate_and_validate(
    make_client: AppFactory, store: RedisReviewStore, bundle: Path, tmp_path: Path
) -> None:
    reviewed(store)
    client = make_client()
    page = client.get("/export").text
    assert '<strong id="export-count">3</strong>' in page
    lines = client.get("/export.jsonl").text.splitlines()
    docs = {d["source"]: d for d in map(json.loads, lines)}
    assert set(docs) == {SOURCE.format(i) for i in (1, 2, 3)}
    assert docs[SOURCE.format(2)]["verdict_detail"]["note"] == "dropout" and docs[SOURCE.format(2)]["status"] == "acked"
    assert docs[SOURCE.format(1)]["record"]["N"] == [-2.0]
    r = client.get("/export.npz?states=pending")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    with np.load(io.BytesIO(r.content), allow_pickle=False) as data:
        assert sorted(str(s) for s in data["source"]) == [SOURCE.format(1), SOURCE.format(3)]
    path = tmp_path / "reviewed.npz"
    path.write_bytes(client.get("/export.npz").content)
    cal = run_zeroproof("calibrate", str(bundle), "--data", str(path), "--json")
    assert cal.returncode in (0, 1), cal.stderr  # 1 = no candidate meets the limits: a verdict, not a failure
    rows = json.loads(cal.stdout)["rows"]
    assert rows and all(0.0 <= r["coverage"] <= 1.0 for r in rows)
    # the singular-verdict input (x = 0.5, the pole) stays ⊥ at every candidate: ⊥ rate on singular targets 1
    assert {r["bottom_rate_singular"] for r in rows} == {1.0}
    val = run_zeroproof(
        "validate", str(bundle), "--data", str(path), "--skip-onnx", "--report-dir", str(tmp_path / "v")
    )
    assert val.returncode in (0, 1) and "reports:" in val.stdout, val.stderr
    assert client.get("/export.npz?model=nothing").status_code == 409
