"""A running service sees what another process does to the gallery file: erasure takes effect at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.config import GallerySettings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GallerySync

MODEL = "dlib-resnet29-int8"


def enrol(store: GalleryStore, name: str, seed: int) -> tuple[str, np.ndarray]:
    vector = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    person = store.add_person(name)
    store.add_template(person.id, vector, model_id=MODEL, model_sha256="0" * 64, quality={})
    return person.id, vector


def test_an_erasure_by_another_process_leaves_the_matcher_within_one_interval(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    ticks = iter([0.0, 1.0, 2.5, 5.0])
    with GalleryStore.open(path) as service_store, GalleryStore.open(path) as cli_store:
        person_id, vector = enrol(service_store, "Ada", 1)
        enrol(service_store, "Bob", 2)
        matcher = Matcher.for_gallery(GallerySettings())
        matcher.load(service_store.iter_templates(MODEL))
        sync = GallerySync(service_store, matcher, MODEL, interval_seconds=2.0, clock=lambda: next(ticks))
        assert matcher.search(vector).person_id == person_id
        cli_store.delete_person(person_id, actor="cli:test")
        assert sync.maybe_sync() is False  # 1 s: not due yet
        assert sync.maybe_sync() is True  # 2.5 s: reloaded
        assert matcher.search(vector).person_id != person_id
        assert sync.maybe_sync() is False  # nothing changed since


def test_a_rename_by_another_process_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    ticks = iter([0.0, 3.0])
    with GalleryStore.open(path) as service_store, GalleryStore.open(path) as cli_store:
        person_id, vector = enrol(service_store, "Ada", 1)
        matcher = Matcher.for_gallery(GallerySettings())
        matcher.load(service_store.iter_templates(MODEL))
        sync = GallerySync(service_store, matcher, MODEL, interval_seconds=2.0, clock=lambda: next(ticks))
        cli_store.update_person(person_id, name="Ada Lovelace")
        assert sync.maybe_sync() is True
        assert matcher.search(vector).name == "Ada Lovelace"
