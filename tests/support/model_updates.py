"""A device's command side with a `ModelUpdater`, as the service wires it, and model releases signed for it.

`Live.apply` does at once what the service's gallery thread and frame loop do: build the pipeline on the new
models, build the new embedder's matcher aside and take it whole, remember the models folder. Every check of a
candidate runs the real child process on the real test faces.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.releases import manifest_entry
from agent.commands.signing import key_id
from agent.errors import ModelError
from agent.modelupdate.install import installed_models_dir, state_models_dir
from agent.modelupdate.update import ModelUpdater, sign_model
from agent.vision.image import load_image
from agent.vision.modelstore import MANIFEST_NAME, ModelStore, default_models_dir
from agent.vision.pipeline import FacePipeline, PipelineOptions
from tests.support.commands import Device, data, make_device
from tests.support.data import EMBEDDER_ID, SAMPLE

CHUNK = 256 * 1024  # the size of each chunk `Updates.chunks` sends


@dataclass
class Live:
    """The running agent's models: what the frame thread swaps."""

    device: Device
    pipeline: FacePipeline
    swaps: int = 0
    broken: bool = False

    def apply(self, models_dir: Path) -> None:
        if self.broken:
            raise ModelError("the frame loop could not build the pipeline")
        settings = self.device.current[0]
        pipeline = FacePipeline(PipelineOptions(models_dir=models_dir))
        self.device.gallery.switch_model(pipeline.embedder.info.model_id, self.device.matcher.take, pipeline.embedder)
        self.device.current[0] = replace(settings, models=replace(settings.models, dir=models_dir))
        self.pipeline, self.swaps = pipeline, self.swaps + 1

    def embedding(self) -> np.ndarray:
        return self.pipeline.analyse(load_image(SAMPLE))[0].embedding

    def recognizes(self, person_id: str) -> bool:
        return self.device.matcher.search(self.embedding()).person_id == person_id


@dataclass
class Updates:
    device: Device
    live: Live
    key: Ed25519PrivateKey
    before: np.ndarray  # the sample face's embedding under the shipped model
    shipped: Path  # the models the device started with

    def call(self, phase: str, **args: Any) -> dict:
        return self.device.call("model_update", {"phase": phase, **args})

    def begin(self, job_id: str, content: bytes, *, key: Ed25519PrivateKey | None = None, **meta: Any) -> dict:
        return self.call("begin", job_id=job_id, **signed_release(key or self.key, content, **meta))

    def chunks(self, job_id: str, content: bytes, *, first: int = 0, last: int | None = None) -> list[dict]:
        pieces = [content[start : start + CHUNK] for start in range(0, len(content), CHUNK)]
        return [self.chunk(job_id, i, pieces[i]) for i in range(first, len(pieces) if last is None else last)]

    def chunk(self, job_id: str, index: int, data: bytes) -> dict:
        return self.call("chunk", job_id=job_id, index=index, data=base64.b64encode(data).decode())

    def send(self, job_id: str, content: bytes, **meta: Any) -> dict:
        """A whole job; the commit's reply data."""
        assert self.begin(job_id, content, **meta)["data"]["status"] == "IN_PROGRESS"
        assert all(reply["status"] == "ok" for reply in self.chunks(job_id, content))
        return data(self.call("commit", job_id=job_id))

    def enroll(self) -> str:
        photo = {"data": base64.b64encode(SAMPLE.read_bytes()).decode()}
        return data(self.device.call("enroll", {"name": "Lin-Manuel Miranda", "images": [photo]}))["person"]["id"]

    def assert_old_model_runs(self) -> None:
        """Nothing installed, nothing swapped, nothing staged: the shipped model still embeds as before."""
        models_dir = state_models_dir(self.device.store_path)
        assert installed_models_dir(self.device.store_path) is None and self.live.swaps == 0
        assert not list((models_dir / ".staging").glob("*")) and not list(models_dir.glob("*.tflite"))
        assert np.array_equal(self.live.embedding(), self.before)
        shipped = FacePipeline(PipelineOptions(models_dir=self.shipped))
        assert np.array_equal(shipped.analyse(load_image(SAMPLE))[0].embedding, self.before)
        assert data(self.device.call("ping"))["pong"] is True


def signed_release(key: Ed25519PrivateKey, content: bytes, **meta: Any) -> dict[str, Any]:
    """The begin arguments of a model release of `content` (the int8 embedder unless `meta` says otherwise),
    signed by `key`."""
    release = {
        "model_id": EMBEDDER_ID,
        "role": "embedder",
        "file": "dlib_resnet29_int8.tflite",
        "version": "2",
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "entry": {},
    } | meta
    return release | {"signature": sign_model(key, release)}


def updater(key: Ed25519PrivateKey, live: Live) -> ModelUpdater:
    """What the service builds (at every start): an updater on the device's state directory that trusts `key`
    for releases and swaps models through `live`."""
    device = live.device
    return ModelUpdater(
        state_models_dir(device.store_path),
        get_settings=lambda: device.current[0],
        keys={key_id(key.public_key()): key.public_key()},
        apply=live.apply,
        gallery=device.gallery,
    )


FUSED_ID = "fused-dlib-mobileface-mixed"
MOBILEFACE_ID = "mobileface-v2-int8-mixed"
# What a device in the field today lacks: MobileFace and the fused entries (and MobileFaceNet, shipped since).
FIELD_ABSENT = (
    MOBILEFACE_ID,
    "mobileface-v2-int8",
    "mobileface-v2-float32",
    FUSED_ID,
    "fused-dlib-mobileface-int8",
    "mobilefacenet-float32",
    "fused-dlib-mobilefacenet",
)


def shipped_models(folder: Path, embedder: str, *, without: tuple[str, ...] = ()) -> Path:
    """The shipped models with `embedder` as the default (links, and a manifest saying so), the entries `without`
    names left out (with their files)."""
    shipped = default_models_dir()
    manifest = json.loads((shipped / MANIFEST_NAME).read_text(encoding="utf-8"))
    gone = {entry["file"] for entry in manifest["models"] if entry["id"] in without}
    manifest["models"] = [entry for entry in manifest["models"] if entry["id"] not in without]
    manifest["defaults"]["embedder"] = embedder
    folder.mkdir(parents=True)
    for item in shipped.iterdir():
        if item.name != MANIFEST_NAME and item.name not in gone:
            (folder / item.name).symlink_to(item)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return folder


def dlib_models(folder: Path) -> Path:
    """The shipped models with dlib int8 as the default embedder: the updates here ship dlib's file as a new
    version of the model in use."""
    return shipped_models(folder, EMBEDDER_ID)


def field_models(folder: Path) -> Path:
    """What a device in the field runs today: the detectors and dlib, dlib int8 the default; no MobileFace and no
    fused entry (`fusion_releases` ships them)."""
    return shipped_models(folder, EMBEDDER_ID, without=FIELD_ABSENT)


def fused_models(folder: Path) -> Path:
    """The shipped models with the fused embedder as the default, as a device moved to it runs."""
    return shipped_models(folder, FUSED_ID)


def device_on(tmp_path: Path, models: Path, device_id: str = "dev1") -> Live:
    """A device in `tmp_path` running the models in `models` (its manifest's defaults)."""
    pipeline = FacePipeline(PipelineOptions(models_dir=models, threads=1))
    device = make_device(tmp_path, pipeline, device_id=device_id)
    settings = device.current[0]
    device.current[0] = replace(settings, models=replace(settings.models, dir=models))
    return Live(device, pipeline)


def dlib_device(tmp_path: Path, device_id: str = "dev1") -> Live:
    """A device in `tmp_path` running the shipped models with dlib int8 as its embedder (`dlib_models`)."""
    return device_on(tmp_path, dlib_models(tmp_path / "shipped-models"), device_id)


def make_updates(tmp_path: Path, *, keep_chips: bool = False, models: Callable[[Path], Path] = dlib_models) -> Updates:
    """A device running `models` (dlib int8 unless told), taking updates signed by a key of its own."""
    live = device_on(tmp_path, models(tmp_path / "shipped-models"))
    device = live.device
    settings = device.current[0]
    device.current[0] = replace(settings, gallery=replace(settings.gallery, keep_chips=keep_chips))
    key = Ed25519PrivateKey.generate()
    device.services.model_updates = updater(key, live)
    return Updates(device, live, key, live.embedding(), settings.models.dir or default_models_dir())


@dataclass(frozen=True)
class Shipped:
    """One release as the publisher makes it from the shipped manifest (`ctl model-release --entry-from`)."""

    content: bytes
    meta: dict[str, Any]  # signed_release's keyword arguments


def from_manifest(model_id: str, version: str, **meta: Any) -> Shipped:
    """The shipped file of `model_id` released under its shipped manifest entry, as `version`."""
    shipped = default_models_dir()
    spec = ModelStore(shipped).specs[model_id]
    content = (shipped / spec.file).read_bytes()
    entry = manifest_entry(shipped / MANIFEST_NAME, model_id, content)
    return Shipped(content, {"model_id": model_id, "file": spec.file, "version": version, "entry": entry} | meta)


def fusion_releases() -> tuple[Shipped, Shipped]:
    """What moves a field device (`field_models`) to the fused embedder: MobileFace on standby (version 2), then
    the fused definition (version 3: releases of a role only move forward)."""
    return from_manifest(MOBILEFACE_ID, "2", standby=True), from_manifest(FUSED_ID, "3")
