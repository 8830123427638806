"""The gallery store on real SQLite files: what it keeps, how it refuses bad files, and what it never leaks."""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.errors import GalleryError
from agent.gallery import schema
from agent.gallery.store import GalleryStore
from agent.identity import Consent, new_event_id, utc_iso, utc_now
from tests.support.compare import file_sha256
from tests.support.data import EMBEDDER_ID as MODEL

NOBODY = 65534


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gallery.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[GalleryStore]:
    with GalleryStore.open(db_path) as opened:
        yield opened


def vector(seed: int, dims: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, dims).astype(np.float32)


def enroll(store: GalleryStore, name: str, seeds: list[int], model_id: str = MODEL) -> str:
    with store.transaction():
        person = store.add_person(name)
        for seed in seeds:
            store.add_template(person.id, vector(seed), model_id=model_id, model_sha256="ab" * 32, quality={"q": 1.0})
    return person.id


def event(store: GalleryStore, person_id: str | None = None, created_at: str | None = None) -> str:
    event_id = new_event_id()
    payload = {"person_id": person_id, "distance": 0.4}
    store.add_event(
        "face_recognized", payload, event_id=event_id, person_id=person_id, created_at=created_at or utc_now()
    )
    return event_id


# ------------------------------------------------------------------------------------ the file


def test_new_gallery_and_its_wal_files_are_private(store: GalleryStore, db_path: Path) -> None:
    store.add_person("Ann")
    for path in (db_path, db_path.with_name("gallery.db-wal"), db_path.with_name("gallery.db-shm")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_every_connection_has_wal_busy_timeout_secure_delete_and_foreign_keys(store: GalleryStore) -> None:
    pragma = {name: store.db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("journal_mode", "busy_timeout")}
    assert pragma == {"journal_mode": "wal", "busy_timeout": 5000}
    assert store.db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_gallery_is_stamped_with_application_id_and_schema_version(store: GalleryStore) -> None:
    assert store.db.execute("PRAGMA application_id").fetchone()[0] == schema.APPLICATION_ID
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION


def test_reopening_keeps_the_data(db_path: Path) -> None:
    with GalleryStore.open(db_path) as first:
        person_id = enroll(first, "Ann", [1, 2])
    with GalleryStore.open(db_path, create=False) as second:
        assert second.get_person(person_id).name == "Ann"
        assert second.count_templates(person_id, MODEL) == 2


def test_create_false_refuses_a_missing_file(db_path: Path) -> None:
    with pytest.raises(GalleryError, match="does not exist"):
        GalleryStore.open(db_path, create=False)
    assert not db_path.exists()


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match=r"directory .*nowhere does not exist"):
        GalleryStore.open(tmp_path / "nowhere" / "gallery.db")


def test_a_directory_is_not_a_gallery(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="is a directory"):
        GalleryStore.open(tmp_path)


def test_a_file_that_is_not_sqlite_is_refused_untouched(db_path: Path) -> None:
    db_path.write_bytes(b"name,embedding\nann,0.1 0.2\n" * 100)
    before = file_sha256(db_path)
    with pytest.raises(GalleryError, match=r"not a SQLite database.*untouched.*\.bad"):
        GalleryStore.open(db_path)
    assert file_sha256(db_path) == before


def test_a_foreign_sqlite_database_is_refused_untouched(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
    conn.close()
    before = file_sha256(db_path)
    with pytest.raises(GalleryError, match=r"another application \(tables invoices\).*untouched"):
        GalleryStore.open(db_path)
    assert file_sha256(db_path) == before


def test_a_sqlite_file_of_another_application_id_is_refused(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()
    with pytest.raises(GalleryError, match="application_id 0x4d2"):
        GalleryStore.open(db_path)


def test_a_corrupt_gallery_is_refused_untouched(db_path: Path) -> None:
    with GalleryStore.open(db_path) as store:
        for index in range(40):
            enroll(store, f"person {index}", [index])
    page_size = 4096
    with open(db_path, "r+b") as handle:  # scribble over the b-tree header of page 3
        handle.seek(2 * page_size)
        handle.write(b"\xa5" * 64)
    before = file_sha256(db_path)
    with pytest.raises(GalleryError, match=rf"gallery {db_path} is corrupt.*untouched.*restore"):
        GalleryStore.open(db_path)
    assert file_sha256(db_path) == before


def test_a_gallery_newer_than_the_code_is_refused_untouched(db_path: Path) -> None:
    GalleryStore.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    conn.close()
    before = file_sha256(db_path)
    with pytest.raises(GalleryError, match=r"newer than this faceagent understands.*upgrade faceagent"):
        GalleryStore.open(db_path)
    assert file_sha256(db_path) == before


def test_a_failing_migration_step_leaves_the_previous_version(db_path: Path, monkeypatch) -> None:
    GalleryStore.open(db_path).close()

    def broken_step(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("disk full, say")

    released = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, broken_step))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    with pytest.raises(GalleryError, match="disk full"):
        GalleryStore.open(db_path)
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == released
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0
    conn.close()


def _without_write_access(action: Callable[[], object]) -> str:
    """Run `action` as a user who may read but not write the gallery; returns the error text."""
    if os.getuid() != 0:
        try:
            action()
        except GalleryError as exc:
            return str(exc)
        return "no error"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # root bypasses file modes: drop to nobody in a forked child
        message = "no error"
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
        except BaseException as exc:
            message = str(exc)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as handle:
        return handle.read().decode()


def test_a_read_only_gallery_is_a_clear_error() -> None:
    folder = Path(tempfile.mkdtemp(prefix="faceagent-ro-"))  # outside root's private pytest folder
    try:
        path = folder / "gallery.db"
        with GalleryStore.open(path) as store:
            enroll(store, "Ann", [1])
        path.chmod(0o444)
        folder.chmod(0o555)
        before = file_sha256(path)
        message = _without_write_access(lambda: GalleryStore.open(path))
        assert "read-only" in message and str(path) in message
        assert file_sha256(path) == before
    finally:
        folder.chmod(0o755)
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


# ------------------------------------------------------------------------------------ people


def test_person_round_trips_with_consent(store: GalleryStore) -> None:
    consent = Consent(given_by="Ann herself", given_at="2024-05-01T10:00:00+02:00", reference="form-17", purpose="door")
    person = store.add_person("  Ann Lee ", external_ref="hr-42", consent=consent)
    loaded = store.get_person(person.id)
    assert loaded == person and loaded.name == "Ann Lee" and loaded.external_ref == "hr-42"
    assert loaded.consent == Consent("Ann herself", "2024-05-01T08:00:00.000Z", "form-17", "door")


def test_unknown_person_is_none(store: GalleryStore) -> None:
    assert store.get_person("p_nobody") is None


def test_people_are_listed_in_enrollment_order(store: GalleryStore) -> None:
    ids = [store.add_person(name).id for name in ("Ann", "Bob", "Cy")]
    assert [p.id for p in store.list_people()] == ids


@pytest.mark.parametrize("name", ["", "   ", "two\nlines", "x" * 201])
def test_bad_names_are_refused(store: GalleryStore, name: str) -> None:
    with pytest.raises(GalleryError, match="name must be"):
        store.add_person(name)


def test_update_changes_name_and_clears_reference(store: GalleryStore) -> None:
    person = store.add_person("Ann", external_ref="hr-42")
    updated = store.update_person(person.id, name="Ann Lee", external_ref="")
    assert (updated.name, updated.external_ref) == ("Ann Lee", None)
    assert updated.updated_at >= person.updated_at and updated.created_at == person.created_at


def test_update_is_audited_without_the_values(store: GalleryStore) -> None:
    person = store.add_person("Ann")
    store.update_person(person.id, name="Secret Name", actor="cli:alice")
    (record,) = store.audit_log()
    assert (record["actor"], record["action"], record["target"]) == ("cli:alice", "person.update", person.id)
    assert record["details"] == {"fields": "name"} and "Secret" not in str(record)


def test_update_of_unknown_person_is_a_gallery_error(store: GalleryStore) -> None:
    with pytest.raises(GalleryError, match="no person with id 'p_nobody'"):
        store.update_person("p_nobody", name="X")


def test_delete_of_unknown_person_is_a_gallery_error_and_audits_nothing(store: GalleryStore) -> None:
    with pytest.raises(GalleryError, match="no person with id 'p_nobody'"):
        store.delete_person("p_nobody", actor="cli:alice")
    assert store.audit_log() == []


def test_delete_removes_templates_and_events_and_audits_counts(store: GalleryStore) -> None:
    person_id = enroll(store, "Ann", [1, 2, 3])
    other = enroll(store, "Bob", [4])
    event(store, person_id)
    event(store, other)
    counts = store.delete_person(person_id, actor="cli:alice")
    assert counts == {"people": 1, "templates": 3, "chips": 0, "events": 1, "negatives": 0, "wal_truncated": 1}
    assert store.get_person(person_id) is None and store.count_templates(person_id, MODEL) == 0
    assert [(e["type"], e["payload"]["person_id"]) for e in store.pending_events()] == [
        ("face_recognized", other),
        ("person_erased", person_id),
    ]
    (record,) = store.audit_log()
    assert record["target"] == person_id and record["details"] == {
        "people": 1,
        "templates": 3,
        "chips": 0,
        "events": 1,
        "negatives": 0,
    }
    assert "Ann" not in str(record)


# ------------------------------------------------------------------------------------ templates


def test_templates_are_float32_little_endian_blobs(store: GalleryStore) -> None:
    person_id = enroll(store, "Ann", [1])
    blob, dims = store.db.execute("SELECT embedding, dims FROM templates").fetchone()
    assert dims == 128 and blob == vector(1).astype("<f4").tobytes()
    assert person_id


def test_iter_templates_yields_only_the_asked_model(store: GalleryStore) -> None:
    ann = enroll(store, "Ann", [1, 2])
    enroll(store, "Old", [3], model_id="old-model")
    rows = list(store.iter_templates(MODEL))
    assert [(r[1], r[2]) for r in rows] == [(ann, "Ann"), (ann, "Ann")]
    assert rows[0][3].dtype == np.float32 and np.array_equal(rows[1][3], vector(2))


def test_people_needing_reenrollment_lack_a_template_of_the_model(store: GalleryStore) -> None:
    enroll(store, "Ann", [1])
    old = enroll(store, "Old", [2], model_id="old-model")
    bare = store.add_person("No templates").id
    assert store.people_needing_reenrollment(MODEL) == [old, bare]
    assert store.template_counts() == {store.list_people()[0].id: {MODEL: 1}, old: {"old-model": 1}}


def test_template_for_unknown_person_is_refused(store: GalleryStore) -> None:
    with pytest.raises(GalleryError, match="no person with id"):
        store.add_template("p_nobody", vector(1), model_id=MODEL, model_sha256="x", quality={})


@pytest.mark.parametrize("bad", [np.zeros((2, 64)), np.array([np.nan] * 128), np.zeros(0)])
def test_malformed_embeddings_are_refused(store: GalleryStore, bad: np.ndarray) -> None:
    person = store.add_person("Ann")
    with pytest.raises(ValueError, match="embedding must be"):
        store.add_template(person.id, bad, model_id=MODEL, model_sha256="x", quality={})


def test_failed_enrollment_leaves_no_person(store: GalleryStore) -> None:
    with pytest.raises(ValueError), store.transaction():
        person = store.add_person("Ann")
        store.add_template(person.id, vector(1), model_id=MODEL, model_sha256="x", quality={})
        store.add_template(person.id, np.array([np.inf]), model_id=MODEL, model_sha256="x", quality={})
    assert store.list_people() == [] and list(store.iter_templates(MODEL)) == []


def test_chips_are_kept_only_when_given(store: GalleryStore) -> None:
    person = store.add_person("Ann")
    store.add_template(person.id, vector(1), model_id=MODEL, model_sha256="x", quality={}, chip=b"\x01" * 100)
    assert store.db.execute("SELECT length(chip) FROM templates").fetchone()[0] == 100


# ------------------------------------------------------------------------------------ events


def test_events_come_out_oldest_first_with_their_payload(store: GalleryStore) -> None:
    ids = [event(store) for _ in range(5)]
    pending = store.pending_events(limit=3)
    assert [e["id"] for e in pending] == ids[:3]
    assert pending[0]["payload"] == {"person_id": None, "distance": 0.4} and pending[0]["type"] == "face_recognized"
    assert pending[0]["seq"] < pending[1]["seq"] < pending[2]["seq"]


def test_deleted_events_leave_the_outbox(store: GalleryStore) -> None:
    ids = [event(store) for _ in range(4)]
    store.delete_events(ids[:3])
    assert [e["id"] for e in store.pending_events()] == ids[3:]


def test_outbox_order_survives_deleting_the_newest_event(store: GalleryStore) -> None:
    first = event(store)
    store.delete_events([first])
    second = event(store)
    (pending,) = store.pending_events()
    assert pending["id"] == second and pending["seq"] == 2  # AUTOINCREMENT: a seq is never reused


def test_duplicate_event_id_is_refused(store: GalleryStore) -> None:
    event_id = event(store)
    with pytest.raises(GalleryError, match="already in the outbox"):
        store.add_event("face_unknown", {}, event_id=event_id, person_id=None, created_at=utc_now())


def test_events_are_counted_all_together_and_by_type(store: GalleryStore) -> None:
    for _ in range(3):
        event(store)
    store.add_event("face_unknown", {}, event_id=new_event_id(), person_id=None, created_at=utc_now())
    counts = [store.count_events(kind) for kind in (None, "face_recognized", "face_unknown", "person_erased")]
    assert counts == [4, 3, 1, 0]


def test_the_oldest_event_ids_come_in_outbox_order_leaving_out_one_type(store: GalleryStore) -> None:
    first = event(store)
    store.delete_person(store.add_person("Ada").id, actor="test")  # queues a person_erased notice
    later = [event(store) for _ in range(3)]
    notice = next(e["id"] for e in store.pending_events() if e["type"] == "person_erased")
    assert store.oldest_event_ids(3) == [first, notice, later[0]]
    assert store.oldest_event_ids(3, excluding_type="person_erased") == [first, *later[:2]]


def test_event_for_an_erased_person_is_dropped(store: GalleryStore) -> None:
    person_id = enroll(store, "Ann", [1])
    store.delete_person(person_id, actor="cli:alice")
    event(store, person_id)
    assert [e["type"] for e in store.pending_events()] == ["person_erased"]


def test_event_payload_must_be_finite_json(store: GalleryStore) -> None:
    with pytest.raises(ValueError, match="use null for an infinite margin"):
        store.add_event(
            "face_recognized", {"margin": float("inf")}, event_id="e1", person_id=None, created_at=utc_now()
        )


def test_event_times_are_normalised_to_utc_z(store: GalleryStore) -> None:
    event(store, created_at="2024-05-01T12:00:00+02:00")
    assert store.pending_events()[0]["created_at"] == "2024-05-01T10:00:00.000Z"


# ------------------------------------------------------------------------------------ audit, retention


def test_audit_details_must_be_scalars(store: GalleryStore) -> None:
    with pytest.raises(ValueError, match="must be a scalar"):
        store.audit("cli:alice", "person.enroll", "p_1", {"embedding": [0.1] * 128})


def test_purge_removes_only_expired_events_and_audit(store: GalleryStore) -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    old, fresh = event(store, created_at=utc_iso(now - timedelta(days=31))), event(store, created_at=utc_iso(now))
    store.db.execute("INSERT INTO audit (at, actor, action) VALUES (?, 'cli:a', 'x')", [utc_iso(now - timedelta(400))])
    store.db.execute("INSERT INTO audit (at, actor, action) VALUES (?, 'cli:a', 'y')", [utc_iso(now - timedelta(300))])
    counts = store.purge_expired(events_days=30, audit_days=365, now=now)
    assert counts == {"events": 1, "audit": 1, "negatives": 0}
    assert [e["id"] for e in store.pending_events()] == [fresh] and old != fresh
    assert [r["action"] for r in store.audit_log()] == ["retention.purge", "y"]


def test_purge_with_nothing_expired_writes_nothing(store: GalleryStore) -> None:
    event(store)
    assert store.purge_expired(events_days=30, audit_days=365) == {"events": 0, "audit": 0, "negatives": 0}
    assert store.audit_log() == [] and len(store.pending_events()) == 1


def test_purge_refuses_negative_retention(store: GalleryStore) -> None:
    with pytest.raises(ValueError, match="retention days"):
        store.purge_expired(events_days=-1, audit_days=365)


def test_stats_count_people_templates_and_pending_events(store: GalleryStore) -> None:
    enroll(store, "Ann", [1, 2])
    enroll(store, "Old", [3], model_id="old-model")
    event(store)
    assert store.stats(MODEL) == {
        "people": 2,
        "templates": {MODEL: 2, "old-model": 1},
        "people_needing_reenrollment": 1,
        "events_pending": 1,
    }


def test_a_gallery_path_the_file_system_cannot_hold_is_a_gallery_error(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="too long"):
        GalleryStore.open(tmp_path / ("x" * 5000 + ".db"))


def test_a_version_1_gallery_is_migrated_forward_keeping_its_people(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    schema.MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    at = "2026-01-01T00:00:00+00:00"
    conn.execute("INSERT INTO people (id, name, created_at, updated_at) VALUES ('p_1', 'Ada', ?, ?)", (at, at))
    conn.commit()
    conn.close()
    with GalleryStore.open(db_path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert [p.name for p in store.list_people()] == ["Ada"]
        assert store.remember_signed_request("k", datetime(2030, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))


def test_a_signed_request_is_remembered_until_it_expires(store: GalleryStore) -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    expires = now + timedelta(seconds=120)
    assert store.remember_signed_request("key-1", expires, now)
    assert not store.remember_signed_request("key-1", expires, now + timedelta(seconds=60))
    assert store.remember_signed_request("key-1", expires + timedelta(seconds=120), now + timedelta(seconds=121))


# ------------------------------------------------------------------------------------------ scale (v3)


def _version_2_gallery(path: Path) -> None:
    """A gallery as the code before schema v3 left it: v1 and v2 steps, one person with a template."""
    conn = sqlite3.connect(path, isolation_level=None)
    for step in schema.MIGRATIONS[:2]:
        step(conn)
    conn.execute("PRAGMA user_version = 2")
    at = "2026-01-01T00:00:00+00:00"
    conn.execute("INSERT INTO people (id, name, created_at, updated_at) VALUES ('p_1', 'Ada', ?, ?)", (at, at))
    conn.execute(
        "INSERT INTO templates (person_id, embedding, dims, model_id, model_sha256, created_at) "
        "VALUES ('p_1', ?, 128, ?, ?, ?)",
        (vector(1).astype("<f4").tobytes(), MODEL, "0" * 64, at),
    )
    conn.close()


def _indexes(store: GalleryStore) -> set[str]:
    return {row[0] for row in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_a_version_2_gallery_is_migrated_to_version_3_in_place_keeping_its_templates(db_path: Path) -> None:
    _version_2_gallery(db_path)
    with GalleryStore.open(db_path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert {"templates_person_model", "people_created"} <= _indexes(store)
        assert "templates_person" not in _indexes(store)  # the composite index's prefix serves its lookups
        assert [(pid, name) for _, pid, name, _ in store.iter_templates(MODEL)] == [("p_1", "Ada")]
        assert store.people_needing_reenrollment("other-model") == ["p_1"]


def _plans(store: GalleryStore, call: Callable[[], object]) -> dict[str, list[str]]:
    """The query plan of every SELECT `call` runs, by its SQL text."""
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    try:
        call()
    finally:
        store.db.conn.set_trace_callback(None)
    plans = {}
    for sql in statements:
        if sql.lstrip().upper().startswith("SELECT"):
            plans[sql] = [row[3] for row in store.db.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    return plans


def test_people_needing_reenrollment_looks_each_person_up_by_the_composite_index(store: GalleryStore) -> None:
    """Through templates_model alone it walked every template of the model once per person (quadratic)."""
    plans = _plans(store, lambda: store.people_needing_reenrollment(MODEL))
    (plan,) = plans.values()
    assert any("templates_person_model (person_id=? AND model_id=?)" in step for step in plan), plan


def test_status_and_listing_queries_never_read_template_rows_or_sort(store: GalleryStore) -> None:
    """Counts by person and model come from an index alone, people in enrollment order from people_created."""
    person = store.add_person("Ada")
    store.add_template(person.id, vector(1), model_id=MODEL, model_sha256="0" * 64, quality={})
    calls = {
        "listing": lambda: store.listing(MODEL),
        "page": lambda: store.listing(MODEL, offset=0, limit=10),
        "stats": lambda: store.stats(MODEL),
        "fingerprint": store.fingerprint,
    }
    for name, call in calls.items():
        for sql, plan in _plans(store, call).items():
            assert not any("TEMP B-TREE" in step for step in plan), (name, sql, plan)
            scans = [step for step in plan if step.startswith(("SCAN templates", "SCAN t "))]
            assert all("COVERING INDEX" in step for step in scans), (name, sql, plan)


def test_a_listing_page_counts_everyone_but_lists_its_page(store: GalleryStore) -> None:
    ids = [store.add_person(f"P{i}").id for i in range(5)]
    store.add_template(ids[3], vector(3), model_id=MODEL, model_sha256="0" * 64, quality={})
    page = store.listing(MODEL, offset=2, limit=2)
    assert [row["id"] for row in page["people"]] == ids[2:4]
    assert [row["needs_reenrollment"] for row in page["people"]] == [True, False]
    assert page["people"][1]["templates"] == {MODEL: 1}
    assert (page["total"], page["people_needing_reenrollment"]) == (5, 4)
