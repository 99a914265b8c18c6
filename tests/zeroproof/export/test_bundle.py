from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from zeroproof.export import BundleError, load_bundle, load_servable, read_manifest, save_bundle, save_torchscript
from zeroproof.export.bundle import weights_sha256
from zeroproof.inference import InferenceConfig, SCMInferenceWrapper
from zeroproof.layers import ProjectiveMLP, known_pole_model

pytestmark = pytest.mark.unit
CFG = InferenceConfig(tau_infer=1e-5, tau_train=1e-3)


def make_bundle(tmp_path: Path) -> tuple[ProjectiveMLP, Path]:
    torch.manual_seed(0)
    model = ProjectiveMLP(4, 2, hidden=16)
    path = tmp_path / "model.zpb"
    save_bundle(model, path, config=CFG, model_version="arm-2026.11.25", extra={"trained_steps": 10})
    return model, path


def test_bundle_round_trip_restores_model_thresholds_and_version(tmp_path: Path) -> None:
    model, path = make_bundle(tmp_path)
    bundle = load_bundle(path)
    assert bundle.manifest.model_version == "arm-2026.11.25"
    assert bundle.config == CFG
    assert bundle.manifest.extra == {"trained_steps": 10}
    assert bundle.manifest.weights_sha256 == weights_sha256(model.state_dict())
    assert not bundle.model.training
    x = torch.randn(8, 4)
    for a, b in zip(model(x), bundle.model(x), strict=True):
        assert torch.equal(a, b)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    _, path = make_bundle(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # flip a bit in the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(path)


def test_tampered_manifest_is_refused(tmp_path: Path) -> None:
    _, path = make_bundle(tmp_path)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    manifest = json.loads(header["__metadata__"]["zeroproof"])
    manifest["weights_sha256"] = "0" * 64
    header["__metadata__"]["zeroproof"] = json.dumps(manifest)
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    path.write_bytes(struct.pack("<Q", len(new_header)) + new_header + raw[8 + header_len :])
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(path)


def test_pinned_checksum_is_enforced(tmp_path: Path) -> None:
    _, path = make_bundle(tmp_path)
    good = read_manifest(path).weights_sha256
    assert load_bundle(path, expected_sha256=good.upper()).manifest.weights_sha256 == good
    with pytest.raises(BundleError, match="pinned"):
        load_bundle(path, expected_sha256="ab" * 32)


def test_not_a_bundle_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zpb"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError, match="not a zeroproof bundle"):
        load_bundle(junk)


def test_pickles_are_never_loaded(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}}, evil)  # a pickle-based file (zip)
    with pytest.raises(BundleError):
        load_servable(evil)  # treated as TorchScript, whose loader refuses it; never torch.load'ed


def test_unregistered_models_cannot_be_bundled(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not a registered architecture"):
        save_bundle(torch.nn.Linear(2, 2), tmp_path / "x.zpb", model_version="1")
    with pytest.raises(ValueError, match="model_version"):
        save_bundle(known_pole_model(), tmp_path / "x.zpb", model_version="")


def test_load_servable_detects_bundle_and_torchscript(tmp_path: Path) -> None:
    _, path = make_bundle(tmp_path)
    servable = load_servable(path)
    assert servable.kind == "bundle" and servable.config == CFG and servable.in_features == 4
    ts_path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(known_pole_model(0.5)), str(ts_path))
    ts = load_servable(ts_path)
    assert ts.kind == "torchscript" and ts.config is None and ts.model_version.startswith("torchscript-")
    N, D = ts.model(torch.tensor([[0.5]]))
    assert D.item() == 0.0
    with pytest.raises(BundleError, match="pinned"):
        load_servable(ts_path, expected_sha256="00" * 32)
    with pytest.raises(FileNotFoundError):
        load_servable(tmp_path / "missing.zpb")


def test_strict_torchscript_export_is_servable_too(tmp_path: Path) -> None:
    path = tmp_path / "strict.pt"
    save_torchscript(SCMInferenceWrapper(known_pole_model(0.5), CFG), path)
    out = load_servable(path).model(torch.tensor([[0.5], [1.0]]))
    assert out[1].squeeze(1).tolist() == [True, False]
