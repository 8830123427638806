"""Gallery schema v4 on real SQLite files: negatives ("that face was not this person"), where a template came
from (`source`, `event_id`), and the migration of a v3 gallery in place."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import GalleryError
from agent.gallery import schema
from agent.gallery.store import GalleryStore
from agent.identity import Consent, new_event_id, utc_now
from tests.support.data import EMBEDDER_ID as MODEL

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GalleryStore]:
    with GalleryStore.open(tmp_path / "gallery.db") as opened:
        yield opened


def vector(seed: int, dims: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, dims).astype(np.float32)


def person_with_template(store: GalleryStore, name: str, seed: int, **where: str | None) -> str:
    person = store.add_person(name)
    store.add_template(person.id, vector(seed), model_id=MODEL, model_sha256="ab" * 32, quality={}, **where)
    return person.id


def negative(store: GalleryStore, person_id: str, seed: int, *, cap: int = 5, at: datetime = T0, **kw: float) -> int:
    return store.add_negative(
        person_id, vector(seed), model_id=MODEL, event_id=new_event_id(), ttl_days=kw.get("ttl", 30.0), cap=cap, now=at
    )


# ------------------------------------------------------------------------------------ migration


@pytest.fixture
def migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[GalleryStore, str]]:
    """A v3 gallery opened by this code (so migrated to v4), and its one person's id."""
    path = tmp_path / "gallery.db"
    person_id = _version_3_gallery(path, monkeypatch)
    with GalleryStore.open(path) as store:
        yield store, person_id


def _version_3_gallery(path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A gallery as today's v3 code writes it: the store itself at schema v3 adds the person (with consent),
    an event, an audit record and a remembered signed request; the template row has v3's columns exactly."""
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:3])
        patch.setattr(schema, "SCHEMA_VERSION", 3)
        with GalleryStore.open(path) as v3:
            consent = Consent(given_by="Ada", given_at=utc_now(), reference="form-7")
            person = v3.add_person("Ada", consent=consent, actor="cli:alice")
            v3.db.execute(
                "INSERT INTO templates (person_id, embedding, dims, model_id, model_sha256, quality, chip, created_at) "
                "VALUES (?, ?, 128, ?, ?, '{\"score\":0.9}', ?, ?)",
                [person.id, vector(1).astype("<f4").tobytes(), MODEL, "0" * 64, b"\x01" * 16, utc_now()],
            )
            v3.add_event(
                "face_recognized", {"person_id": person.id}, event_id="E1", person_id=person.id, created_at=utc_now()
            )
            v3.remember_signed_request("k", T0 + timedelta(days=9999), T0)
            assert v3.db.execute("PRAGMA user_version").fetchone()[0] == 3
    return person.id


def test_a_version_3_gallery_migrates_to_v4_keeping_people_templates_events_and_audit(
    migrated: tuple[GalleryStore, str],
) -> None:
    store, person_id = migrated
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 4
    assert store.db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    ((template_id, owner, name, embedding),) = store.iter_templates(MODEL)
    assert (owner, name) == (person_id, "Ada") and np.array_equal(embedding, vector(1))
    row = store.db.execute("SELECT source, event_id, chip FROM templates WHERE id = ?", [template_id]).fetchone()
    assert row == ("photo", None, b"\x01" * 16)
    assert store.get_person(person_id).consent.reference == "form-7"  # type: ignore[union-attr]
    assert [e["id"] for e in store.pending_events()] == ["E1"]
    assert [r["action"] for r in store.audit_log()] == ["person.add"]
    assert store.negatives(MODEL) == []


def test_the_migrated_gallery_takes_event_templates_and_negatives(migrated: tuple[GalleryStore, str]) -> None:
    store, person_id = migrated
    store.add_template(
        person_id, vector(2), model_id=MODEL, model_sha256="0" * 64, quality={}, source="event", event_id="E1"
    )
    negative(store, person_id, 3, at=datetime.now(UTC))
    assert len(list(store.iter_templates(MODEL))) == 2 and len(store.negatives(MODEL)) == 1


def test_an_unknown_template_source_is_refused_by_the_store_and_by_the_file(store: GalleryStore) -> None:
    person_id = person_with_template(store, "Ada", 1)
    with pytest.raises(GalleryError, match="source must be one of"):
        store.add_template(person_id, vector(2), model_id=MODEL, model_sha256="ab" * 32, quality={}, source="guess")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        store.db.execute("UPDATE templates SET source = 'guess'")


# ------------------------------------------------------------------------- templates of an event


def test_delete_event_templates_takes_back_only_that_events_templates(store: GalleryStore) -> None:
    ada = person_with_template(store, "Ada", 1)
    store.add_template(
        ada, vector(2), model_id=MODEL, model_sha256="ab" * 32, quality={}, source="adaptive", event_id="E1"
    )
    store.add_template(
        ada, vector(3), model_id=MODEL, model_sha256="ab" * 32, quality={}, source="event", event_id="E2"
    )
    assert store.delete_event_templates("E1") == {ada: 1}
    kept = store.db.execute("SELECT source, event_id FROM templates ORDER BY id").fetchall()
    assert kept == [("photo", None), ("event", "E2")]


def test_delete_event_templates_of_one_person_leaves_the_others(store: GalleryStore) -> None:
    ada = person_with_template(store, "Ada", 1, source="event", event_id="E1")
    grace = person_with_template(store, "Grace", 2, source="event", event_id="E1")
    assert store.delete_event_templates("E1", person_id=ada) == {ada: 1}
    assert [row[1] for row in store.iter_templates(MODEL)] == [grace]


def test_delete_event_templates_of_an_event_without_templates_changes_nothing(store: GalleryStore) -> None:
    person_with_template(store, "Ada", 1)
    before = store.fingerprint()
    assert store.delete_event_templates("E9") == {}
    assert store.fingerprint() == before


# ------------------------------------------------------------------------------------ negatives


def test_a_negative_is_stored_for_its_person_and_model(store: GalleryStore) -> None:
    ada = person_with_template(store, "Ada", 1)
    negative_id = negative(store, ada, 7)
    ((stored_id, owner, embedding),) = store.negatives(MODEL, now=T0)
    assert (stored_id, owner) == (negative_id, ada) and np.array_equal(embedding, vector(7))
    assert store.negatives("other-model", now=T0) == []


def test_negatives_can_be_read_for_some_people_only(store: GalleryStore) -> None:
    ada, grace = person_with_template(store, "Ada", 1), person_with_template(store, "Grace", 2)
    negative(store, ada, 7)
    negative(store, grace, 8)
    assert [owner for _, owner, _ in store.negatives(MODEL, [grace], now=T0)] == [grace]


def test_a_negative_for_a_person_not_in_the_gallery_is_refused(store: GalleryStore) -> None:
    with pytest.raises(GalleryError, match="no person with id"):
        negative(store, "p_nobody", 7)


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("inf"), float("nan")])
def test_a_negative_needs_a_finite_positive_time_to_live(store: GalleryStore, ttl: float) -> None:
    ada = person_with_template(store, "Ada", 1)
    with pytest.raises(ValueError, match="time to live"):
        negative(store, ada, 7, ttl=ttl)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cap=st.integers(1, 6), added=st.integers(1, 12))
def test_a_person_keeps_at_most_cap_negatives_the_newest(tmp_path: Path, cap: int, added: int) -> None:
    with GalleryStore.open(tmp_path / f"cap-{cap}-{added}.db") as store:
        ada = person_with_template(store, "Ada", 1)
        ids = [negative(store, ada, seed, cap=cap, at=T0 + timedelta(minutes=seed)) for seed in range(added)]
        assert [negative_id for negative_id, _, _ in store.negatives(MODEL, now=T0)] == ids[-cap:]


def test_the_cap_counts_each_person_apart(store: GalleryStore) -> None:
    ada, grace = person_with_template(store, "Ada", 1), person_with_template(store, "Grace", 2)
    negative(store, grace, 9, cap=1)
    negative(store, ada, 7, cap=1)
    negative(store, ada, 8, cap=1)
    assert sorted(owner for _, owner, _ in store.negatives(MODEL, now=T0)) == sorted([ada, grace])


def test_an_expired_negative_is_not_read_and_retention_deletes_it(store: GalleryStore) -> None:
    ada = person_with_template(store, "Ada", 1)
    negative(store, ada, 7, ttl=1.0)
    kept = negative(store, ada, 8, ttl=3.0)
    later = T0 + timedelta(days=2)
    assert [negative_id for negative_id, _, _ in store.negatives(MODEL, now=later)] == [kept]
    counts = store.purge_expired(events_days=30, audit_days=365, now=later)
    assert counts["negatives"] == 1 and store.db.table("negatives").count == 1
    assert store.audit_log()[0]["details"]["negatives"] == 1


def test_erasing_a_person_erases_their_negatives_and_counts_them(store: GalleryStore) -> None:
    ada, grace = person_with_template(store, "Ada", 1), person_with_template(store, "Grace", 2)
    negative(store, ada, 7)
    negative(store, ada, 8)
    negative(store, grace, 9)
    counts = store.delete_person(ada, actor="cli:alice")
    assert counts["negatives"] == 2
    assert [owner for _, owner, _ in store.negatives(MODEL, now=T0)] == [grace]
    assert store.audit_log()[0]["details"]["negatives"] == 2


def test_a_new_negative_changes_the_fingerprint(store: GalleryStore) -> None:
    ada = person_with_template(store, "Ada", 1)
    before = store.fingerprint()
    negative(store, ada, 7)
    assert store.fingerprint() != before
