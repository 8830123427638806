"""A running service sees what another process does to the gallery file: erasure takes effect at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import GallerySettings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GallerySync
from tests.support.data import EMBEDDER_ID as MODEL


def enroll(store: GalleryStore, name: str, seed: int) -> tuple[str, np.ndarray]:
    vector = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    person = store.add_person(name)
    store.add_template(person.id, vector, model_id=MODEL, model_sha256="0" * 64, quality={})
    return person.id, vector


def test_an_erasure_by_another_process_leaves_the_matcher_within_one_interval(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    ticks = iter([0.0, 1.0, 2.5, 5.0])
    with GalleryStore.open(path) as service_store, GalleryStore.open(path) as cli_store:
        person_id, vector = enroll(service_store, "Ada", 1)
        enroll(service_store, "Bob", 2)
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
        person_id, vector = enroll(service_store, "Ada", 1)
        matcher = Matcher.for_gallery(GallerySettings())
        matcher.load(service_store.iter_templates(MODEL))
        sync = GallerySync(service_store, matcher, MODEL, interval_seconds=2.0, clock=lambda: next(ticks))
        cli_store.update_person(person_id, name="Ada Lovelace")
        assert sync.maybe_sync() is True
        assert matcher.search(vector).name == "Ada Lovelace"


def test_a_reload_that_read_the_gallery_before_a_command_erased_someone_does_not_bring_them_back(
    tmp_path: Path,
) -> None:
    """The command thread commits an erasure and patches the matcher while the sync thread reads rows."""
    path = tmp_path / "g.db"
    ticks = iter([0.0, 3.0, 3.1])
    with (
        GalleryStore.open(path) as sync_store,
        GalleryStore.open(path) as command_store,
        GalleryStore.open(path) as cli_store,
    ):
        ada, ada_vector = enroll(command_store, "Ada", 1)
        matcher = Matcher.for_gallery(GallerySettings())
        matcher.load(sync_store.iter_templates(MODEL))
        sync = GallerySync(sync_store, matcher, MODEL, interval_seconds=2.0, clock=lambda: next(ticks))
        cleo, cleo_vector = enroll(cli_store, "Cleo", 3)  # another process: the sync must reload
        read = sync_store.iter_templates

        def rows_while_a_command_erases_ada(model_id: str):
            for i, row in enumerate(read(model_id)):
                if i == 1:
                    command_store.delete_person(ada, actor="mqtt:test")
                    matcher.remove_person(ada)
                yield row

        sync_store.iter_templates = rows_while_a_command_erases_ada  # type: ignore[method-assign]
        assert sync.maybe_sync() is False  # the rows predate the erasure: not swapped in
        assert matcher.search(ada_vector).person_id != ada
        sync_store.iter_templates = read  # type: ignore[method-assign]
        assert sync.maybe_sync() is True  # read again at once
        assert matcher.search(ada_vector).person_id != ada
        assert matcher.search(cleo_vector).person_id == cleo


def test_an_erasure_leaves_the_matcher_even_while_the_full_reload_cannot_complete(tmp_path: Path) -> None:
    """Erasure must not wait on the slow full reload (a command patching the matcher can keep failing it)."""
    path = tmp_path / "g.db"
    ticks = iter([0.0, 3.0])
    with GalleryStore.open(path) as sync_store, GalleryStore.open(path) as cli_store:
        ada, ada_vector = enroll(cli_store, "Ada", 1)
        bob, _ = enroll(cli_store, "Bob", 2)
        matcher = Matcher.for_gallery(GallerySettings())
        matcher.load(sync_store.iter_templates(MODEL))
        sync = GallerySync(sync_store, matcher, MODEL, interval_seconds=2.0, clock=lambda: next(ticks))
        sync.reload = lambda: False  # type: ignore[method-assign]
        cli_store.delete_person(ada, actor="cli:test")
        assert sync.maybe_sync() is False
        assert matcher.person_ids() == {bob}
        assert matcher.search(ada_vector).person_id != ada


def test_a_write_of_this_process_refreshes_its_people_and_needs_no_reload(tmp_path: Path) -> None:
    """A command's write reaches the matcher through the sync at once, for the people it changed only."""
    path = tmp_path / "g.db"
    ticks = iter([0.0, 3.0])
    with GalleryStore.open(path) as sync_store, GalleryStore.open(path) as command_store:
        ada, _ = enroll(command_store, "Ada", 1)
        matcher = Matcher.for_gallery(GallerySettings())
        matcher.load(sync_store.iter_templates(MODEL))
        sync = GallerySync(sync_store, matcher, MODEL, interval_seconds=2.0, clock=lambda: next(ticks))
        with sync.writing(command_store) as changed:
            bob, bob_vector = enroll(command_store, "Bob", 2)
            command_store.delete_person(ada, actor="mqtt:test")
            changed.update({ada, bob})
        assert matcher.person_ids() == {bob} and matcher.search(bob_vector).person_id == bob
        assert sync.maybe_sync() is False and sync.reloads == 0  # the change was all ours, and is held


def test_another_process_writing_during_a_recorded_write_still_gets_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    ticks = iter([0.0, 3.0])
    with (
        GalleryStore.open(path) as sync_store,
        GalleryStore.open(path) as command_store,
        GalleryStore.open(path) as cli_store,
    ):
        ada, ada_vector = enroll(command_store, "Ada", 1)
        cleo, _ = enroll(command_store, "Cleo", 3)
        matcher = Matcher.for_gallery(GallerySettings())
        matcher.load(sync_store.iter_templates(MODEL))
        sync = GallerySync(sync_store, matcher, MODEL, interval_seconds=2.0, clock=lambda: next(ticks))
        with sync.writing(command_store) as changed:
            command_store.update_person(cleo, name="Cleo B", actor="mqtt:test")
            cli_store.delete_person(ada, actor="cli:test")  # meanwhile, another process
            changed.add(cleo)
        assert sync.maybe_sync() is True
        assert matcher.search(ada_vector).person_id != ada and matcher.person_ids() == {cleo}


def test_a_model_switch_changes_nothing_unless_the_new_matcher_goes_live(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with GalleryStore.open(path) as store:
        ada, ada_vector = enroll(store, "Ada", 1)
        other = store.add_person("Bob")
        store.add_template(other.id, ada_vector, model_id="next-model", model_sha256="0" * 64, quality={})
        matcher = Matcher.for_gallery(GallerySettings())
        matcher.load(store.iter_templates(MODEL))
        sync = GallerySync(store, matcher, MODEL)

        def refuse(built: Matcher) -> None:
            raise RuntimeError("the frame loop could not take it")

        with pytest.raises(RuntimeError):
            sync.switch_model("next-model", refuse)
        assert sync.model_id == MODEL and matcher.search(ada_vector).person_id == ada
        sync.switch_model("next-model", matcher.take)
        assert sync.model_id == "next-model" and matcher.search(ada_vector).person_id == other.id
