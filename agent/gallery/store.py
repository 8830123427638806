"""The gallery on disk: people, their templates and negatives, the event outbox and the audit log, in one
SQLite file.

The CLI and the running service share the file, so every connection uses WAL and a busy timeout, and
every write runs in a `BEGIN IMMEDIATE` transaction: writers queue on the lock instead of failing with
"database is locked" when a read-then-write transaction cannot upgrade. Templates are biometric data:
`secure_delete` zeroes erased rows in place, and an erasure ends with a truncating WAL checkpoint so no
old copy of the pages survives in the -wal file either (no VACUUM needed). That checkpoint holds the write
lock while it waits for readers, so it waits briefly and, if a reader is still busy, is left pending in
`meta` for the gallery thread to finish (`finish_erasures`): the frame loop's event writes never queue
behind a long read. `purge_expired` is the
retention rule; the service calls it every `retention.purge_interval_seconds`. A negative ("that face was
not this person", a correction by event id) is kept per person and model up to a cap, until its own
`expires_at`, and goes with the person.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import numpy as np
import sqlite_utils

from agent.errors import GalleryError
from agent.gallery import schema
from agent.identity import Consent, Person, new_event_id, new_person_id, utc_iso, utc_now
from agent.storage import StorageFullError, is_disk_full
from agent.wire import FACE_RECOGNIZED, PERSON_ERASED, SCHEMA, PersonErased

MAX_DIMS = 4096
_TEXT_LIMIT = 200
_DELETE_CHUNK = 500
ADAPTIVE = "adaptive"  # the source of the templates adaptation makes (gallery.adapt)
_LAST_PERSON = "last_person"  # meta key: who the Home Assistant sensor shows, by id only
_ERASURE_IN_WAL = "erasure_in_wal"  # meta key: an erasure whose pages may still be in the -wal file
# How long a truncating checkpoint may hold the write lock waiting for readers. Longer stalls every writer
# (the frame loop's event writes waited 1.07 s behind a matcher reload's read); a busy one is retried.
WAL_TRUNCATE_WAIT_SECONDS = 0.05
# People the loaded embedder cannot match; `p` is the people table.
_NO_TEMPLATE_OF_MODEL = "NOT EXISTS (SELECT 1 FROM templates t WHERE t.person_id = p.id AND t.model_id = ?)"

log = logging.getLogger(__name__)
# (templates, last template id, people, last update, length of the names, negatives, last negative id)
Fingerprint = tuple[int, int, int, str, int, int, int]
P = ParamSpec("P")
R = TypeVar("R")


def _guarded(method: Callable[Concatenate[GalleryStore, P], R]) -> Callable[Concatenate[GalleryStore, P], R]:
    """Report SQLite failures as a GalleryError that names the file."""

    @functools.wraps(method)
    def wrapper(self: GalleryStore, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._errors():
            return method(self, *args, **kwargs)

    return wrapper


class GalleryStore:
    """One open gallery file. Not shared between threads: open one store per thread or process."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.db = sqlite_utils.Database(conn, execute_plugins=False)

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> GalleryStore:
        """Open (or, with `create`, make) a gallery; refuses corrupt, foreign and newer files untouched."""
        path = Path(path)
        return cls(path, schema.connect(path, create=create))

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if is_disk_full(exc):  # its own type: the agent runs on without the write, a command says so
                raise StorageFullError(f"gallery {self.path}: no space left on its file system ({exc})") from exc
            raise schema.translate(self.path, exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing: the writes inside commit together or not at all (nested blocks are savepoints).

        An enrollment is `with store.transaction(): add_person(...); add_template(...) ...`, so a crash or an
        error half-way leaves no person without templates.
        """
        conn = self.db.conn
        if conn.in_transaction:
            with self.db.atomic():
                yield
            return
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            with self._errors():
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one state of the file, whatever other connections commit meanwhile."""
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        with self._errors():
            conn.execute("BEGIN")
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    # ---------------------------------------------------------------------------------------- people

    @_guarded
    def add_person(
        self,
        name: str,
        *,
        external_ref: str | None = None,
        consent: Consent | None = None,
        actor: str | None = None,
    ) -> Person:
        """A new person without templates; audited as "person.add" when an `actor` is given."""
        now = utc_now()
        row = {
            "id": new_person_id(),
            "name": _text(name, "name"),
            "external_ref": _optional_text(external_ref, "external_ref"),
            **_consent_columns(consent),
            "created_at": now,
            "updated_at": now,
        }
        with self.transaction():
            self.db.table("people").insert(row)
            if actor is not None:
                self.audit(actor, "person.add", row["id"], {"consent": consent is not None})
        return _person(row)

    @_guarded
    def get_person(self, person_id: str) -> Person | None:
        rows = list(self.db.query("SELECT * FROM people WHERE id = ?", [person_id]))
        return _person(rows[0]) if rows else None

    @_guarded
    def list_people(self) -> list[Person]:
        return [_person(row) for row in self.db.query("SELECT * FROM people ORDER BY created_at, rowid")]

    @_guarded
    def person_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT id FROM people")}

    @_guarded
    def update_person(
        self,
        person_id: str,
        *,
        name: str | None = None,
        external_ref: str | None = None,
        actor: str | None = None,
    ) -> Person:
        """Change the display name and/or external reference ("" clears it); audited without the values."""
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _text(name, "name")
        if external_ref is not None:
            changes["external_ref"] = _optional_text(external_ref, "external_ref")
        with self.transaction():
            self._require_person(person_id)
            if changes:
                fields = ",".join(sorted(changes))
                self.db.table("people").update(person_id, {**changes, "updated_at": utc_now()})
                if actor is not None:
                    self.audit(actor, "person.update", person_id, {"fields": fields})
            return self._require_person(person_id)

    @_guarded
    def delete_person(self, person_id: str, *, actor: str) -> dict[str, int]:
        """Erase the person, their templates (and chips) and every event naming them, in one transaction.

        The same transaction queues a `person_erased` event (the id only), so every erasure, from the CLI
        or over MQTT, reaches the consumers downstream through the outbox, even after an outage or a restart.
        The audit record holds only the id and the counts. `wal_truncated` is 0 when a reader kept the WAL
        busy; the erasure then stays pending and `finish_erasures` (the running agent's gallery thread
        calls it every turn) truncates the WAL once the reader is done.
        """
        with self.transaction():
            self._require_person(person_id)
            where = ("person_id = ?", [person_id])
            counts = {
                "people": 1,
                "templates": self.db.table("templates").count_where(*where),
                "chips": self.db.table("templates").count_where("person_id = ? AND chip IS NOT NULL", [person_id]),
                "events": self.db.table("events").count_where(*where),
                "negatives": self.db.table("negatives").count_where(*where),
            }
            self.db.table("negatives").delete_where(*where)
            self.db.table("events").delete_where(*where)
            self.db.table("templates").delete_where(*where)
            self.db.table("people").delete(person_id)
            self.db.execute(
                "DELETE FROM meta WHERE key = ? AND json_extract(value, '$.person_id') = ?", [_LAST_PERSON, person_id]
            )
            self._add_erasure_notice(person_id)
            self.audit(actor, "person.delete", person_id, counts)
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [_ERASURE_IN_WAL, utc_now()])
        counts["wal_truncated"] = int(self.finish_erasures())
        return counts

    @_guarded
    def finish_erasures(self) -> bool:
        """Truncate the WAL if an erasure may have left pages in it; True when none is pending any more."""
        if not self.db.execute("SELECT 1 FROM meta WHERE key = ?", [_ERASURE_IN_WAL]).fetchone():
            return True
        if not self._truncate_wal():
            return False
        with self.transaction():  # this write's pages hold only the meta row: nothing erased
            self.db.execute("DELETE FROM meta WHERE key = ?", [_ERASURE_IN_WAL])
        return True

    def _add_erasure_notice(self, person_id: str) -> None:
        """The outbox row announcing an erasure: no name, nothing but the id. Its `person_id` column stays
        NULL (the person row is gone), so neither the erasure's cascade nor `add_event`'s check removes it."""
        event_id, now = new_event_id(), utc_now()
        payload: PersonErased = {
            "schema": SCHEMA,
            "event_id": event_id,
            "type": PERSON_ERASED,
            "person_id": person_id,
            "at": now,
        }
        row = {"id": event_id, "type": PERSON_ERASED, "person_id": None, "payload": _json(payload, "payload")}
        self.db.table("events").insert(row | {"created_at": now})

    def _require_person(self, person_id: str) -> Person:
        person = self.get_person(person_id)
        if person is None:
            raise GalleryError(f"no person with id {person_id!r} in gallery {self.path}")
        return person

    # ------------------------------------------------------------------------------------- templates

    @_guarded
    def add_template(
        self,
        person_id: str,
        embedding: np.ndarray,
        *,
        model_id: str,
        model_sha256: str,
        quality: dict[str, float],
        chip: bytes | None = None,
        source: str = "photo",
        event_id: str | None = None,
    ) -> int:
        """Store one embedding (float32 little-endian) of an existing person; returns the template id.

        `source` says where it came from (`schema.TEMPLATE_SOURCES`), `event_id` the decided track it was made
        from, if any (`delete_event_templates` takes such templates back)."""
        if source not in schema.TEMPLATE_SOURCES:
            raise GalleryError(f"template source must be one of {', '.join(schema.TEMPLATE_SOURCES)}, got {source!r}")
        row = {
            "person_id": person_id,
            "embedding": _embedding_blob(embedding),
            "dims": int(np.asarray(embedding).size),
            "model_id": _text(model_id, "model_id"),
            "model_sha256": _text(model_sha256, "model_sha256"),
            "quality": _json({str(k): float(v) for k, v in quality.items()}, "quality"),
            "chip": None if chip is None else bytes(chip),
            "created_at": utc_now(),
            "source": source,
            "event_id": None if event_id is None else _text(event_id, "event_id"),
        }
        with self.transaction():
            self._require_person(person_id)
            template_id = self.db.table("templates").insert(row).last_pk
        return int(cast(int, template_id))

    @_guarded
    def carry_templates(self, from_model_id: str, to_model_id: str) -> tuple[list[str], int, int]:
        """Copy the templates and live negatives of `from_model_id` to `to_model_id` for each person with none of
        `to_model_id` yet, in one transaction: for an embedder that takes the other's vectors as its own
        (`agent.vision.fusion.carried_models`). A copy keeps its row's model_sha256 (the build that made it),
        creation time (retention counts from it), chip, quality, source and event. Returns the people carried
        over and the templates and negatives copied."""
        now = utc_now()
        with self.transaction():
            people = [
                row[0]
                for row in self.db.execute(
                    "SELECT p.id FROM people p WHERE EXISTS (SELECT 1 FROM templates t WHERE t.person_id = p.id "
                    f"AND t.model_id = ?) AND {_NO_TEMPLATE_OF_MODEL} ORDER BY p.created_at, p.rowid",
                    [from_model_id, to_model_id],
                )
            ]
            templates = negatives = 0
            for start in range(0, len(people), _DELETE_CHUNK):
                chunk = people[start : start + _DELETE_CHUNK]
                marks = ", ".join("?" * len(chunk))
                templates += self.db.execute(
                    "INSERT INTO templates (person_id, embedding, dims, model_id, model_sha256, quality, chip, "
                    "created_at, source, event_id) SELECT person_id, embedding, dims, ?, model_sha256, quality, chip, "
                    f"created_at, source, event_id FROM templates WHERE model_id = ? AND person_id IN ({marks}) "
                    "ORDER BY id",
                    [to_model_id, from_model_id, *chunk],
                ).rowcount
                negatives += self.db.execute(
                    "INSERT INTO negatives (person_id, model_id, embedding, event_id, created_at, expires_at) "
                    "SELECT person_id, ?, embedding, event_id, created_at, expires_at FROM negatives "
                    f"WHERE model_id = ? AND expires_at > ? AND person_id IN ({marks}) ORDER BY id",
                    [to_model_id, from_model_id, now, *chunk],
                ).rowcount
        return people, templates, negatives

    @_guarded
    def delete_event_templates(self, event_id: str, *, person_id: str | None = None) -> dict[str, int]:
        """Delete the templates made from the decided track `event_id` (of `person_id` only, if given): a
        correction took that track back. Person id -> templates deleted (empty: there were none)."""
        where, params = "event_id = ?", [_text(event_id, "event_id")]
        if person_id is not None:
            where, params = where + " AND person_id = ?", [*params, person_id]
        with self.transaction():
            sql = f"SELECT person_id, COUNT(*) FROM templates WHERE {where} GROUP BY person_id"
            counts = {row[0]: int(row[1]) for row in self.db.execute(sql, params)}
            if counts:
                self.db.execute(f"DELETE FROM templates WHERE {where}", params)
        return counts

    @_guarded
    def adaptive_templates(self, person_id: str, model_id: str) -> list[int]:
        """Ids of the person's adaptive templates of `model_id`, oldest first: the first the cap replaces."""
        sql = f"SELECT id FROM templates WHERE person_id = ? AND model_id = ? AND source = '{ADAPTIVE}' ORDER BY id"
        return [int(row[0]) for row in self.db.execute(sql, [person_id, model_id])]

    @_guarded
    def delete_templates(self, person_id: str, template_ids: Iterable[int]) -> int:
        """Delete these templates of the person (ids of someone else's are left alone); how many went."""
        ids = [int(template_id) for template_id in template_ids]
        deleted = 0
        with self.transaction():
            for start in range(0, len(ids), _DELETE_CHUNK):
                chunk = ids[start : start + _DELETE_CHUNK]
                sql = f"DELETE FROM templates WHERE person_id = ? AND id IN ({', '.join('?' * len(chunk))})"
                deleted += self.db.execute(sql, [person_id, *chunk]).rowcount
        return deleted

    @_guarded
    def count_adaptive(self) -> int:
        """Adaptive templates in the gallery, every model's: for the status document."""
        return int(self.db.execute(f"SELECT COUNT(*) FROM templates WHERE source = '{ADAPTIVE}'").fetchone()[0])

    def iter_templates(self, model_id: str) -> Iterator[tuple[int, str, str, np.ndarray]]:
        """(template_id, person_id, person_name, float32 embedding) of every template made by `model_id`."""
        sql = (
            "SELECT t.id, t.person_id, p.name, t.embedding FROM templates t JOIN people p ON p.id = t.person_id "
            "WHERE t.model_id = ? ORDER BY t.id"
        )
        with self._errors():
            for template_id, person_id, name, blob in self.db.execute(sql, [model_id]):
                yield template_id, person_id, name, np.frombuffer(blob, dtype="<f4").astype(np.float32)

    @_guarded
    def person_templates(self, model_id: str, person_ids: Iterable[str]) -> list[tuple[int, str, str, np.ndarray]]:
        """`iter_templates` for these people only: what a write to them left (by the person's index)."""
        wanted = sorted(set(person_ids))
        rows: list[tuple[int, str, str, np.ndarray]] = []
        for start in range(0, len(wanted), _DELETE_CHUNK):
            chunk = wanted[start : start + _DELETE_CHUNK]
            sql = (
                "SELECT t.id, t.person_id, p.name, t.embedding FROM templates t JOIN people p ON p.id = t.person_id "
                f"WHERE t.model_id = ? AND t.person_id IN ({', '.join('?' * len(chunk))}) ORDER BY t.id"
            )
            for template_id, person_id, name, blob in self.db.execute(sql, [model_id, *chunk]):
                rows.append((template_id, person_id, name, np.frombuffer(blob, dtype="<f4").astype(np.float32)))
        return rows

    @_guarded
    def chips_to_rebuild(self, old_model_id: str, new_model_id: str) -> list[tuple[str, str, bytes, str]]:
        """(person id, name, chip, quality JSON) of each chip kept with a template of `old_model_id` that has
        no template of `new_model_id` yet, in template order: what a rebuild after a model change embeds."""
        sql = (
            "SELECT t.person_id, p.name, t.chip, t.quality FROM templates t JOIN people p ON p.id = t.person_id "
            "WHERE t.model_id = ? AND t.chip IS NOT NULL AND NOT EXISTS (SELECT 1 FROM templates u "
            "WHERE u.person_id = t.person_id AND u.model_id = ? AND u.chip = t.chip) ORDER BY t.id"
        )
        return [tuple(row) for row in self.db.execute(sql, [old_model_id, new_model_id]).fetchall()]

    @_guarded
    def count_templates(self, person_id: str, model_id: str) -> int:
        return self.db.table("templates").count_where("person_id = ? AND model_id = ?", [person_id, model_id])

    @_guarded
    def template_counts(
        self, person_ids: list[str] | None = None, *, adaptive: bool = False
    ) -> dict[str, dict[str, int]]:
        """person id -> {model id: templates}, for every person with templates (or those of `person_ids`); only
        their adaptive templates with `adaptive` (from an index alone either way: templates_adaptive)."""
        counts: dict[str, dict[str, int]] = {}
        of_source = f"source = '{ADAPTIVE}' AND " if adaptive else ""
        if person_ids is None:
            where = f"WHERE source = '{ADAPTIVE}'" if adaptive else ""
            sql = f"SELECT person_id, model_id, COUNT(*) FROM templates {where} GROUP BY person_id, model_id"
            rows = list(self.db.execute(sql))
        else:
            rows = []
            for start in range(0, len(person_ids), _DELETE_CHUNK):
                chunk = person_ids[start : start + _DELETE_CHUNK]
                sql = (
                    f"SELECT person_id, model_id, COUNT(*) FROM templates WHERE {of_source}person_id IN "
                    f"({', '.join('?' * len(chunk))}) GROUP BY person_id, model_id"
                )
                rows += self.db.execute(sql, chunk).fetchall()
        for person_id, model_id, count in rows:
            counts.setdefault(person_id, {})[model_id] = count
        return counts

    @_guarded
    def people_with_counts(self) -> Iterator[tuple[str, str, str | None, int]]:
        """(person id, updated_at, model id, templates) for each person and model, people in enrollment order
        and models in order; (id, updated_at, None, 0) for a person without templates. One indexed join."""
        sql = (
            "SELECT p.id, p.updated_at, t.model_id, COUNT(t.id) FROM people p "
            "LEFT JOIN templates t ON t.person_id = p.id "
            "GROUP BY p.created_at, p.rowid, t.model_id ORDER BY p.created_at, p.rowid, t.model_id"
        )
        with self._errors():
            yield from self.db.execute(sql)

    @_guarded
    def data_version(self) -> int:
        """SQLite's `data_version`: changes when another connection (any thread or process) commits, never for
        this connection's own commits; two equal readings bracket a stretch in which only this one wrote."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def fingerprint(self) -> Fingerprint:
        """Changes whenever a person, template or negative is added, renamed or erased, by any process."""
        sql = (
            "SELECT (SELECT COUNT(*) FROM templates), (SELECT COALESCE(MAX(id), 0) FROM templates), "
            "(SELECT COUNT(*) FROM people), (SELECT COALESCE(MAX(updated_at), '') FROM people), "
            "(SELECT COALESCE(SUM(LENGTH(name)), 0) FROM people), "
            "(SELECT COUNT(*) FROM negatives), (SELECT COALESCE(MAX(id), 0) FROM negatives)"
        )
        with self._errors():
            templates, last, people, updated, names, negatives, last_negative = self.db.execute(sql).fetchone()
        return int(templates), int(last), int(people), str(updated), int(names), int(negatives), int(last_negative)

    @_guarded
    def listing(self, model_id: str, *, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        """People as JSON (consent, template counts per model, whether `model_id` can match them), in
        enrollment order: all of them, or the page of `limit` from `offset`; `total` counts everyone.

        A page costs what its people cost (their template counts come by the composite index), plus two
        linear counts over the gallery."""
        if offset < 0 or (limit is not None and limit < 0):
            raise GalleryError(f"offset and limit must be >= 0, got {offset} and {limit}")
        sql = "SELECT * FROM people ORDER BY created_at, rowid LIMIT ? OFFSET ?"
        people = [_person(row) for row in self.db.query(sql, [-1 if limit is None else limit, offset])]
        counts = self.template_counts([p.id for p in people]) if limit is not None else self.template_counts()
        adaptive = self.template_counts([p.id for p in people] if limit is not None else None, adaptive=True)
        rows = [
            {
                "id": p.id,
                "name": p.name,
                "external_ref": p.external_ref,
                "consent": asdict(p.consent) if p.consent else None,
                "created_at": p.created_at,
                "updated_at": p.updated_at,
                "templates": counts.get(p.id, {}),
                "adaptive_templates": adaptive.get(p.id, {}),  # of those, how many adaptation made (gallery.adapt)
                "needs_reenrollment": model_id not in counts.get(p.id, {}),
            }
            for p in people
        ]
        total = len(people) if limit is None and offset == 0 else self.db.table("people").count
        stale = self.count_needing_reenrollment(model_id)
        return {"model_id": model_id, "people": rows, "people_needing_reenrollment": stale, "total": total}

    @_guarded
    def people_needing_reenrollment(self, model_id: str) -> list[str]:
        """Ids of people with no template of `model_id`: the loaded embedder cannot recognize them.

        One lookup per person in templates_person_model (schema v3), so linear in the gallery."""
        sql = f"SELECT id FROM people p WHERE {_NO_TEMPLATE_OF_MODEL} ORDER BY created_at, rowid"
        return [row[0] for row in self.db.execute(sql, [model_id])]

    @_guarded
    def count_needing_reenrollment(self, model_id: str) -> int:
        sql = f"SELECT COUNT(*) FROM people p WHERE {_NO_TEMPLATE_OF_MODEL}"
        return int(self.db.execute(sql, [model_id]).fetchone()[0])

    # ------------------------------------------------------------------------------------- negatives

    @_guarded
    def add_negative(
        self,
        person_id: str,
        embedding: np.ndarray,
        *,
        model_id: str,
        event_id: str | None,
        ttl_days: float,
        cap: int,
        now: datetime | None = None,
    ) -> int:
        """Store "this face is not `person_id`" until `ttl_days` from now; the person keeps at most `cap`
        negatives of `model_id`, the oldest dropped first. Returns the negative's id."""
        if cap < 1:
            raise ValueError(f"the negatives cap must be at least 1, got {cap}")
        if not (math.isfinite(ttl_days) and ttl_days > 0):
            raise ValueError(f"a negative's time to live must be a finite number of days > 0, got {ttl_days!r}")
        moment = now or datetime.now(UTC)
        row = {
            "person_id": person_id,
            "model_id": _text(model_id, "model_id"),
            "embedding": _embedding_blob(embedding),
            "event_id": None if event_id is None else _text(event_id, "event_id"),
            "created_at": utc_iso(moment),
            "expires_at": utc_iso(moment + timedelta(days=ttl_days)),
        }
        with self.transaction():
            self._require_person(person_id)
            negative_id = int(cast(int, self.db.table("negatives").insert(row).last_pk))
            self.db.execute(
                "DELETE FROM negatives WHERE person_id = ? AND model_id = ? AND id NOT IN (SELECT id FROM negatives "
                "WHERE person_id = ? AND model_id = ? ORDER BY created_at DESC, id DESC LIMIT ?)",
                [person_id, row["model_id"], person_id, row["model_id"], int(cap)],
            )
        return negative_id

    @_guarded
    def negatives(
        self, model_id: str, person_ids: Iterable[str] | None = None, *, now: datetime | None = None
    ) -> list[tuple[int, str, np.ndarray]]:
        """(negative id, person id, float32 embedding) of every unexpired negative of `model_id` (of these
        people only, if given), in id order."""
        at = utc_iso(now or datetime.now(UTC))
        sql = "SELECT id, person_id, embedding FROM negatives WHERE model_id = ? AND expires_at > ?"
        if person_ids is None:
            chunks: list[list[str]] = [[]]
        else:
            wanted = sorted(set(person_ids))
            chunks = [wanted[start : start + _DELETE_CHUNK] for start in range(0, len(wanted), _DELETE_CHUNK)]
        rows: list[tuple[int, str, np.ndarray]] = []
        for chunk in chunks:
            where = f" AND person_id IN ({', '.join('?' * len(chunk))})" if person_ids is not None else ""
            for negative_id, person_id, blob in self.db.execute(sql + where + " ORDER BY id", [model_id, at, *chunk]):
                rows.append((int(negative_id), person_id, np.frombuffer(blob, dtype="<f4").astype(np.float32)))
        return rows

    @_guarded
    def wrong_person_on(self, event_id: str, person_id: str) -> bool:
        """Whether `wrong_person` on the decided track `event_id` left a negative of `person_id`: read inside
        the adaptation job's write transaction, so a correction committed after the job's first look at the
        feedback window still stops it (the negatives index narrows it to the person's few)."""
        sql = "SELECT 1 FROM negatives WHERE person_id = ? AND event_id = ? LIMIT 1"
        return self.db.execute(sql, [person_id, _text(event_id, "event_id")]).fetchone() is not None

    # ---------------------------------------------------------------------------------------- events

    @_guarded
    def add_event(
        self, event_type: str, payload: Mapping[str, Any], *, event_id: str, person_id: str | None, created_at: str
    ) -> None:
        """Queue an event in the outbox. An event naming a person erased meanwhile is dropped, not stored; a
        `face_recognized` one also becomes the last recognized person (`last_person`)."""
        row = {
            "id": _text(event_id, "event_id"),
            "type": _text(event_type, "event_type"),
            "person_id": person_id,
            "payload": _json(payload, "payload"),
            "created_at": _iso(created_at),
        }
        with self.transaction():
            if person_id is not None and not self.db.table("people").count_where("id = ?", [person_id]):
                log.warning("event %s dropped: its person %s was erased", event_id, person_id)
                return
            if self.db.table("events").count_where("id = ?", [event_id]):
                raise GalleryError(f"event id {event_id!r} is already in the outbox of {self.path}")
            self.db.table("events").insert(row)
            if event_type == FACE_RECOGNIZED and person_id is not None:
                shown = {"person_id": person_id, "camera_id": payload.get("camera_id"), "at": row["created_at"]}
                self.db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [_LAST_PERSON, _json(shown, "last_person")],
                )

    @_guarded
    def last_person(self) -> dict[str, Any] | None:
        """Who was recognized last, as shown now: id, current name, camera, time; None when nobody was or the
        person is erased. Only the id is stored, so a rename shows at once and an erasure leaves no name."""
        sql = (
            "SELECT m.value, p.name FROM meta m JOIN people p ON p.id = json_extract(m.value, '$.person_id') "
            "WHERE m.key = ?"
        )
        row = self.db.execute(sql, [_LAST_PERSON]).fetchone()
        return None if row is None else {**json.loads(row[0]), "name": row[1]}

    @_guarded
    def pending_events(self, limit: int = 100) -> list[dict]:
        """The oldest `limit` events, in outbox order."""
        sql = "SELECT seq, id, type, payload, created_at FROM events ORDER BY seq LIMIT ?"
        return [{**row, "payload": json.loads(row["payload"])} for row in self.db.query(sql, [int(limit)])]

    @_guarded
    def count_events(self, event_type: str | None = None) -> int:
        """Events in the outbox, or those of `event_type`."""
        if event_type is None:
            return int(self.db.table("events").count)
        return int(self.db.table("events").count_where("type = ?", [event_type]))

    @_guarded
    def oldest_event_ids(self, limit: int, *, excluding_type: str | None = None) -> list[str]:
        """Ids of the oldest `limit` events, in outbox order, leaving out those of `excluding_type`."""
        if excluding_type is None:
            return [row[0] for row in self.db.execute("SELECT id FROM events ORDER BY seq LIMIT ?", [int(limit)])]
        sql = "SELECT id FROM events WHERE type != ? ORDER BY seq LIMIT ?"
        return [row[0] for row in self.db.execute(sql, [excluding_type, int(limit)])]

    @_guarded
    def delete_events(self, event_ids: list[str]) -> None:
        with self.transaction():
            for start in range(0, len(event_ids), _DELETE_CHUNK):
                chunk = list(event_ids[start : start + _DELETE_CHUNK])
                self.db.execute(f"DELETE FROM events WHERE id IN ({', '.join('?' * len(chunk))})", chunk)

    @_guarded
    def remember_signed_request(self, key: str, expires_at: datetime, now: datetime) -> bool:
        """False when `key` is remembered already (a replay); else remember it until `expires_at`.

        Expired keys are forgotten on the way: they could only come back as stale requests."""
        with self.transaction():
            self.db.execute("DELETE FROM signed_requests WHERE expires_at <= ?", [now.astimezone(UTC).isoformat()])
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO signed_requests (key, expires_at) VALUES (?, ?)",
                [_text(key, "key"), expires_at.astimezone(UTC).isoformat()],
            )
            return cursor.rowcount == 1

    # ----------------------------------------------------------------------------- audit, retention

    @_guarded
    def audit(self, actor: str, action: str, target: str | None = None, details: dict | None = None) -> None:
        """Record a management action. `details` holds scalars only, so no embedding or image can slip in."""
        for key, value in (details or {}).items():
            if not isinstance(value, str | int | float | bool | type(None)):
                raise ValueError(f"audit detail {key!r} must be a scalar, not {type(value).__name__}")
        row = {
            "at": utc_now(),
            "actor": _text(actor, "actor"),
            "action": _text(action, "action"),
            "target": target,
            "details": _json(details or {}, "details"),
        }
        with self.transaction():
            self.db.table("audit").insert(row)

    @_guarded
    def audit_log(self, limit: int = 100, *, before: int | None = None) -> list[dict]:
        """The newest `limit` audit records (of those with a `seq` below `before`, when given), newest first."""
        where = "" if before is None else "WHERE seq < ? "
        sql = f"SELECT seq, at, actor, action, target, details FROM audit {where}ORDER BY seq DESC LIMIT ?"
        values = [int(limit)] if before is None else [int(before), int(limit)]
        return [{**row, "details": json.loads(row["details"])} for row in self.db.query(sql, values)]

    @_guarded
    def purge_expired(self, *, events_days: float, audit_days: float, now: datetime | None = None) -> dict[str, int]:
        """Delete events and audit records older than their retention, and negatives past their `expires_at`;
        the purge itself is audited.

        An unsent `person_erased` event is a record of an erasure, like the audit: it keeps `audit_days`, so
        a purge of events (or a long outage) cannot leave consumers downstream unaware of an erasure."""
        moment = now or datetime.now(UTC)
        cutoffs = {"events": _cutoff(moment, events_days), "audit": _cutoff(moment, audit_days)}
        expired = "(type != ? AND created_at < ?) OR (type = ? AND created_at < ?)"
        with self.transaction():
            counts = {
                "events": self.db.execute(
                    f"DELETE FROM events WHERE {expired}",
                    [PERSON_ERASED, cutoffs["events"], PERSON_ERASED, cutoffs["audit"]],
                ).rowcount,
                "audit": self.db.execute("DELETE FROM audit WHERE at < ?", [cutoffs["audit"]]).rowcount,
                "negatives": self.db.execute("DELETE FROM negatives WHERE expires_at <= ?", [utc_iso(moment)]).rowcount,
            }
            if any(counts.values()):
                self.audit("retention", "retention.purge", None, counts)
        if counts["events"] or counts["negatives"]:
            with self.transaction():
                self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [_ERASURE_IN_WAL, utc_now()])
            self.finish_erasures()
        return counts

    @_guarded
    def stats(self, model_id: str) -> dict:
        by_model = "SELECT model_id, COUNT(*) FROM templates GROUP BY model_id ORDER BY model_id"
        return {
            "people": self.db.table("people").count,
            "templates": dict(self.db.execute(by_model).fetchall()),
            "people_needing_reenrollment": self.count_needing_reenrollment(model_id),
            "events_pending": self.db.table("events").count,
        }

    def _truncate_wal(self) -> bool:
        """Copy the WAL into the database and truncate it; False when a reader or writer kept it busy for
        longer than `WAL_TRUNCATE_WAIT_SECONDS` (the checkpoint holds the write lock while it waits)."""
        conn = self.db.conn
        (usual,) = conn.execute("PRAGMA busy_timeout").fetchone()
        conn.execute(f"PRAGMA busy_timeout = {int(WAL_TRUNCATE_WAIT_SECONDS * 1000)}")
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(usual)}")
        if busy:
            log.info("gallery %s: a reader kept the WAL busy; the erasure's checkpoint is retried", self.path)
        return not busy


# ------------------------------------------------------------------------------------ row helpers


def _person(row: dict[str, Any]) -> Person:
    consent = None
    if row["consent_given_by"] is not None:
        consent = Consent(
            given_by=row["consent_given_by"],
            given_at=row["consent_given_at"],
            reference=row["consent_reference"],
            purpose=row["consent_purpose"],
        )
    return Person(row["id"], row["name"], row["external_ref"], consent, row["created_at"], row["updated_at"])


def _consent_columns(consent: Consent | None) -> dict[str, str | None]:
    if consent is None:
        return dict.fromkeys(("consent_given_by", "consent_given_at", "consent_reference", "consent_purpose"))
    return {
        "consent_given_by": _text(consent.given_by, "consent.given_by"),
        "consent_given_at": _iso(consent.given_at),
        "consent_reference": _optional_text(consent.reference, "consent.reference"),
        "consent_purpose": _optional_text(consent.purpose, "consent.purpose"),
    }


def _embedding_blob(embedding: np.ndarray) -> bytes:
    """float32 little-endian bytes of a 1-D, finite embedding of at most MAX_DIMS values."""
    vector = np.asarray(embedding)
    if vector.ndim != 1 or not 0 < vector.size <= MAX_DIMS or not np.isfinite(vector).all():
        raise ValueError(f"an embedding must be 1-D, finite, 1..{MAX_DIMS} values; got shape {vector.shape}")
    return vector.astype("<f4").tobytes()


def _text(value: str, what: str) -> str:
    """A stripped, non-empty, single-line string of at most 200 characters."""
    if not isinstance(value, str) or not value.strip():
        raise GalleryError(f"{what} must be a non-empty string, got {value!r}")
    cleaned = value.strip()
    if len(cleaned) > _TEXT_LIMIT or any(ord(c) < 32 or ord(c) == 127 for c in cleaned):
        raise GalleryError(f"{what} must be one line of at most {_TEXT_LIMIT} characters, got {cleaned[:40]!r}...")
    return cleaned


def _optional_text(value: str | None, what: str) -> str | None:
    return None if value is None or value.strip() == "" else _text(value, what)


def _iso(value: str) -> str:
    """A timestamp normalised to the agent's UTC ISO-8601 form, so text order is time order."""
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise GalleryError(f"expected an ISO-8601 timestamp, got {value!r}") from exc
    return utc_iso(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON with finite numbers (use null for an infinite margin): {exc}") from exc


def _cutoff(moment: datetime, days: float) -> str:
    if not (math.isfinite(days) and days >= 0):
        raise ValueError(f"retention days must be a finite number >= 0, got {days!r}")
    return utc_iso((moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - timedelta(days=days))
