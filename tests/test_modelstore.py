"""Integrity: a model is used only when its bytes match the manifest; every failure names the file and hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ModelError
from agent.vision.modelstore import ModelStore
from agent.vision.pipeline import FacePipeline, PipelineOptions


def _embedder_file(models: Path) -> tuple[Path, dict]:
    manifest = json.loads((models / "manifest.json").read_text())
    entry = next(m for m in manifest["models"] if m["id"] == manifest["defaults"]["embedder"])
    return models / entry["file"], entry


def test_shipped_models_all_verify(models_dir: Path) -> None:
    specs = ModelStore(models_dir).verify_all()
    assert {s.role for s in specs} == {"detector", "embedder"}


def test_flipped_byte_is_refused_naming_file_and_expected_hash(models_copy: Path) -> None:
    path, entry = _embedder_file(models_copy)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError) as error:
        FacePipeline(PipelineOptions(models_dir=models_copy))
    assert str(path) in str(error.value)
    assert entry["sha256"] in str(error.value)


def test_truncated_model_is_refused(models_copy: Path) -> None:
    path, entry = _embedder_file(models_copy)
    path.write_bytes(path.read_bytes()[: entry["bytes"] // 3])
    with pytest.raises(ModelError, match="failed its integrity check"):
        ModelStore(models_copy).verify_all()


def test_missing_model_is_refused(models_copy: Path) -> None:
    path, entry = _embedder_file(models_copy)
    path.unlink()
    with pytest.raises(ModelError, match="missing") as error:
        FacePipeline(PipelineOptions(models_dir=models_copy))
    assert entry["sha256"] in str(error.value)


def test_manifest_with_wrong_hash_is_refused(models_copy: Path) -> None:
    manifest_path = models_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["models"][0]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"0{64}"):
        ModelStore(models_copy).verify_all()


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"schema_version": 99, "models": []}'])
def test_unreadable_manifest_is_refused(models_copy: Path, content: str) -> None:
    (models_copy / "manifest.json").write_text(content)
    with pytest.raises(ModelError, match="manifest"):
        ModelStore(models_copy)


def test_manifest_cannot_point_outside_its_directory(models_copy: Path) -> None:
    manifest_path = models_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["models"][0]["file"] = "../../etc/passwd"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="bare name"):
        ModelStore(models_copy)


def test_unknown_model_id_lists_the_known_ones(models_dir: Path) -> None:
    with pytest.raises(ModelError, match="blazeface-short"):
        ModelStore(models_dir).spec("no-such-detector", "detector")


def test_role_mismatch_is_refused(models_dir: Path) -> None:
    store = ModelStore(models_dir)
    with pytest.raises(ModelError, match="not a detector"):
        store.spec(store.defaults["embedder"], "detector")


def test_missing_models_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="manifest not found"):
        ModelStore(tmp_path / "nowhere")


def test_manifest_records_licence_and_provenance(models_dir: Path) -> None:
    for spec in ModelStore(models_dir).specs.values():
        source = spec.raw["source"]
        assert spec.raw["licence"]
        # A PyPI package at a version, or (MobileFace) a public repository at a commit.
        assert (source.get("package") and source.get("version")) or (source.get("repository") and source.get("commit"))
        assert (models_dir / spec.raw["licence_file"]).is_file()


def test_no_68_point_landmark_model_is_shipped(models_dir: Path) -> None:
    names = [p.name.lower() for p in models_dir.rglob("*")]
    assert not any("68" in n and "landmark" in n for n in names)
