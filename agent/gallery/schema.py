"""The gallery file: its tables, forward migrations, connection settings, and the checks that keep
faceagent off files it does not own.

A gallery is a SQLite file stamped with `PRAGMA application_id = APPLICATION_ID` ("FACE") and versioned by
`PRAGMA user_version`. Migrations are plain ordered steps: step N takes a version N database to N + 1, in
one transaction with the version bump, so a crash mid-migration leaves the old version intact. A file that
is not SQLite, fails `quick_check`, carries someone else's tables, or is newer than this code is refused
before anything is written to it: it may be the only copy of someone's data.

Every connection gets WAL and a busy timeout (the CLI and the service share the file), foreign keys, and
`secure_delete` (erased templates are zeroed in place, not left in free pages).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.errors import GalleryError

APPLICATION_ID = 0x46414345  # "FACE"
BUSY_TIMEOUT_SECONDS = 5.0

_V1 = (
    """CREATE TABLE people (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        external_ref TEXT,
        consent_given_by TEXT,
        consent_given_at TEXT,
        consent_reference TEXT,
        consent_purpose TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE templates (
        id INTEGER PRIMARY KEY,
        person_id TEXT NOT NULL REFERENCES people(id) ON DELETE CASCADE,
        embedding BLOB NOT NULL,
        dims INTEGER NOT NULL,
        model_id TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        quality TEXT NOT NULL DEFAULT '{}',
        chip BLOB,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX templates_person ON templates(person_id)",
    "CREATE INDEX templates_model ON templates(model_id)",
    # seq is the outbox order; AUTOINCREMENT so a seq is never reused after its event is published and deleted.
    # person_id references people so an event can never outlive (or be written after) the erasure of its person.
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        person_id TEXT REFERENCES people(id) ON DELETE CASCADE,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX events_person ON events(person_id)",
    "CREATE INDEX events_created ON events(created_at)",
    """CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        details TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX audit_at ON audit(at)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"PRAGMA application_id = {APPLICATION_ID}",
)


def _statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    def step(conn: sqlite3.Connection) -> None:
        for statement in sql:
            conn.execute(statement)

    return step


# MIGRATIONS[n] upgrades a version-n database to version n + 1. Append; never edit a released step.
# v2: signed commands seen within their timestamp window, so a restart does not reopen the replay window.
_V2 = (
    "CREATE TABLE signed_requests (key TEXT PRIMARY KEY, expires_at TEXT NOT NULL)",
    "CREATE INDEX signed_requests_expiry ON signed_requests(expires_at)",
)
# v3: queries that grow with the gallery stay linear. Without (person_id, model_id) the planner answered
# "which people have no template of this model" through templates_model, one full index walk per person
# (170 s at 20,000 people / 100,000 templates); the composite index makes it one lookup per person and
# covers the per-person counts, and replaces templates_person (its prefix). people_created orders listings.
_V3 = (
    "CREATE INDEX templates_person_model ON templates(person_id, model_id)",
    "DROP INDEX templates_person",
    "CREATE INDEX people_created ON people(created_at)",
)
# v4: learning from the camera (issue 13). `negatives` are "that was not this person" corrections: embeddings
# of a face wrongly named as `person_id`, dropped with the person (cascade) and at `expires_at` (retention).
# templates.source says where a template came from (photo, camera, event, adaptive) and templates.event_id
# the decided track it was made from, so a later `wrong_person` on that event can take it back.
_V4 = (
    """CREATE TABLE negatives (
        id INTEGER PRIMARY KEY,
        person_id TEXT NOT NULL REFERENCES people(id) ON DELETE CASCADE,
        model_id TEXT NOT NULL,
        embedding BLOB NOT NULL,
        event_id TEXT,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )""",
    "CREATE INDEX negatives_person_model ON negatives(person_id, model_id)",
    "CREATE INDEX negatives_expiry ON negatives(expires_at)",
    "ALTER TABLE templates ADD COLUMN source TEXT NOT NULL DEFAULT 'photo' "
    "CHECK (source IN ('photo', 'camera', 'event', 'adaptive'))",
    "ALTER TABLE templates ADD COLUMN event_id TEXT",
    "CREATE INDEX templates_event ON templates(event_id) WHERE event_id IS NOT NULL",
    # Adaptive templates per person and model (gallery.adapt: the cap, list_people, status) from the index alone:
    # a query uses it only when it says source = 'adaptive' in so many words, and source is a column of it too
    # (else SQLite reads each row to check it).
    "CREATE INDEX templates_adaptive ON templates(person_id, model_id, source) WHERE source = 'adaptive'",
)
MIGRATIONS: Sequence[Callable[[sqlite3.Connection], None]] = (
    _statements(*_V1),
    _statements(*_V2),
    _statements(*_V3),
    _statements(*_V4),
)
TEMPLATE_SOURCES = ("photo", "camera", "event", "adaptive")
SCHEMA_VERSION = len(MIGRATIONS)


def _recovery(path: Path) -> str:
    return (
        f"faceagent left it untouched; restore {path.name} from a backup, or move it aside "
        f"(mv {path} {path}.bad) and enroll people again into a new gallery"
    )


def corrupt_error(path: Path, detail: str) -> GalleryError:
    detail = " ".join(detail.split())  # quick_check reports span lines; the CLI prints one
    return GalleryError(f"gallery {path} is corrupt or not a SQLite database ({detail}); {_recovery(path)}")


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A configured connection to a migrated gallery; GalleryError (file untouched) when that is unsafe.

    A file that is not SQLite is refused by SQLite's own first read ("file is not a database"), which writes
    nothing. It must not be checked by opening it from Python: closing any descriptor of the file drops every
    POSIX lock this process holds on it, including those of SQLite's other connections (SQLite's documented
    pitfall); such a header check here made a restarted agent fail now and then with
    SQLITE_IOERR_SHORT_READ.
    """
    _prepare_file(path, create)
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    except sqlite3.Error as exc:
        raise translate(path, exc) from exc
    try:
        version = inspect(conn, path)
        _configure(conn, path)
        if version < SCHEMA_VERSION:
            migrate(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise translate(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    _private_sidecars(path)
    return conn


def _prepare_file(path: Path, create: bool) -> None:
    """Make sure `path` is a file faceagent may write, creating it empty with mode 0600 when allowed."""
    try:
        os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # a name too long, a loop of links, a component that is not a folder
        raise GalleryError(f"gallery path {str(path)[:200]}: {exc.strerror or exc}") from exc
    if path.is_dir():
        raise GalleryError(f"gallery path {path} is a directory; give the path of the .db file")
    if not path.exists():
        if not create:
            raise GalleryError(f"gallery {path} does not exist (check gallery.path or --db; enrolling creates it)")
        if not path.parent.is_dir():
            raise GalleryError(f"cannot create gallery {path}: directory {path.parent} does not exist")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            pass  # another process created it first: open theirs
        except OSError as exc:
            raise GalleryError(f"cannot create gallery {path}: {exc.strerror}") from exc
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
        raise GalleryError(
            f"gallery {path} is read-only for this user: faceagent needs write access to the file and to "
            f"{path.parent} (for its -wal and -shm files); run as the service user or fix the permissions"
        )


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    """Per-connection settings; refuses to run without the ones privacy and sharing depend on."""
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.execute("PRAGMA synchronous = FULL")
    secure = conn.execute("PRAGMA secure_delete = ON").fetchone()[0]
    conn.execute("PRAGMA foreign_keys = ON")
    foreign_keys = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    if mode != "wal" or secure != 1 or foreign_keys != 1:
        raise GalleryError(
            f"gallery {path}: SQLite refused WAL, secure_delete or foreign keys (journal_mode={mode}, "
            f"secure_delete={secure}, foreign_keys={foreign_keys}); is the file on a network filesystem?"
        )


def _private_sidecars(path: Path) -> None:
    """SQLite gives -wal and -shm the database's mode; tighten them if someone loosened it."""
    for suffix in ("-wal", "-shm"):
        sidecar = path.with_name(path.name + suffix)
        try:
            if sidecar.stat().st_mode & 0o077:
                sidecar.chmod(0o600)
        except OSError:
            pass  # gone already, or not ours to change


def translate(path: Path, exc: sqlite3.Error) -> GalleryError:
    text = str(exc)
    name = getattr(exc, "sqlite_errorname", None)
    if name and name not in text:
        text = f"{text} ({name})"
    if "locked" in text or "busy" in text:
        return GalleryError(f"gallery {path} stayed locked by another process for {BUSY_TIMEOUT_SECONDS:g} s; retry")
    if "readonly" in text or "read-only" in text:
        return GalleryError(f"gallery {path} is read-only ({text}); faceagent needs write access to it and its folder")
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return corrupt_error(path, text)
    return GalleryError(f"gallery {path}: {text}")


def inspect(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version, after read-only checks that it is ours, current enough and intact.

    A file with no tables and no application id is a new, empty database and counts as version 0.
    """
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:  # corrupt, but also locked or an I/O error: translate says which
        raise translate(path, exc) from exc
    if app_id != APPLICATION_ID and (app_id != 0 or tables):
        found = f"application_id {app_id:#x}" if app_id else f"tables {', '.join(sorted(tables)[:5])}"
        raise GalleryError(
            f"{path} is a SQLite database of another application ({found}), not a faceagent gallery; "
            f"faceagent left it untouched: point gallery.path or --db at a gallery file, or at a new path"
        )
    if version > SCHEMA_VERSION:
        raise GalleryError(
            f"gallery {path} has schema version {version}, newer than this faceagent understands "
            f"({SCHEMA_VERSION}); upgrade faceagent (the file was left untouched)"
        )
    if problems != ["ok"]:
        raise corrupt_error(path, "quick_check: " + "; ".join(problems[:3]))
    return int(version)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the pending steps, each in its own IMMEDIATE transaction with its version bump.

    The version is re-read inside the transaction, so two processes opening a new file at once
    apply each step exactly once.
    """
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                return
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
