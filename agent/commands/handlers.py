"""What each command does, through the same services the CLI calls (`Enroller`, `GalleryStore`, the
settings loader). Arguments arrive validated (`schema`); a handler raises `CommandError` for an expected
refusal and returns `Done` otherwise. A write that finds the disk full is refused as `storage_full`
(nothing was changed), not reported as an internal failure. A write to people or templates is made inside
`services.gallery.writing(store)`, so the live matcher follows it (just those people) before the reply.
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from agent.commands.schema import AUDIT_PAGE, PEOPLE_PAGE, CommandError, ErrorCode
from agent.config import (
    Matching,
    Settings,
    apply_remote,
    audit_floor,
    load_settings,
    read_remote,
    redact_secrets,
    remote_keys,
    remote_settings_path,
    settings_to_dict,
    values_to_toml,
    with_values,
)
from agent.errors import ConfigError, FaceagentError
from agent.files import write_atomically
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GalleryWrites
from agent.identity import Consent, Person, utc_iso
from agent.recognition.capture import CaptureRequest
from agent.recognition.corrections import CorrectionError, Corrections
from agent.recognition.enrollment import Enroller, EnrollmentError, EnrollmentResult
from agent.recognition.feedback import FeedbackWindow
from agent.storage import StorageFullError, StorageHealth, is_disk_full
from agent.vision.modelstore import embedder_id
from agent.wire import (
    AuditPage,
    AuditRecord,
    Command,
    OnlineStatus,
    PeoplePage,
    PersonRow,
    TelemetryHistoryPage,
    reenrollment_count,
    reenrollment_flag,
)


class ModelUpdates(Protocol):
    """The model_update job (`agent/modelupdate/update.py`), given to the commands by the service."""

    def run(
        self, args: dict[str, Any], *, open_store: Callable[[], GalleryStore], actor: str, now: datetime
    ) -> dict: ...


class CameraEnrollment(Protocol):
    """Live enrollment (`agent/service/livecapture.py`): one capture window at a time on the device's camera;
    each call returns the capture's report (`CaptureWindow.report`) or raises CommandError."""

    def start(self, request: CaptureRequest) -> dict[str, Any]: ...

    def status(self, capture_id: str) -> dict[str, Any]: ...

    def cancel(self, capture_id: str) -> dict[str, Any]: ...


@dataclass
class CommandServices:
    """What commands act on; built by the service, each field what the CLI uses too.

    `apply_settings` makes new settings live, each changed section in its consumers (matcher threshold and
    margin included); `request_restart` only schedules a graceful restart, so the reply is published before
    the agent stops. Commands never change the live matcher themselves: `gallery` does, after their writes.
    """

    settings_path: Path | None  # the local settings file (read-only here; None: the built-in defaults)
    get_settings: Callable[[], Settings]
    apply_settings: Callable[[Settings], None]
    open_store: Callable[[], GalleryStore]  # a store for the command thread (one store per thread)
    gallery: GalleryWrites  # told about every write to people or templates
    enroller_factory: Callable[[GalleryStore], Enroller]
    status: Callable[[], OnlineStatus]
    request_restart: Callable[[], None]
    restart_wait: Callable[[], float] | None = None  # seconds until `restart` may run (0: now); None: no limit
    actor_prefix: str = "mqtt"
    model_updates: ModelUpdates | None = None  # the model_update job; None: updates are not offered
    storage: StorageHealth | None = None  # told when a command's gallery write finds the disk full
    camera: CameraEnrollment | None = None  # enrollment from the camera; None: this agent has no frame loop
    feedback: FeedbackWindow | None = None  # decided tracks by event id (corrections); None: not offered
    # The kept telemetry (agent/link/telemetry.py TelemetryHistory.page): documents later than the argument;
    # None: this agent publishes no telemetry, so get_telemetry answers with no points.
    telemetry_history: Callable[[datetime | None], TelemetryHistoryPage] | None = None
    matching: Callable[[], Matching] | None = None  # the live matcher's figures; None: no live matcher


@dataclass(frozen=True)
class Context:
    services: CommandServices
    open_store: Callable[[], GalleryStore]  # opened on first use: ping must answer even if the gallery is broken
    actor: str
    now: datetime

    @property
    def store(self) -> GalleryStore:
        return self.open_store()


@dataclass(frozen=True)
class Done:
    data: Mapping[str, Any]  # the reply's `data` document
    target: str | None = None  # the person acted on, for the audit record
    details: dict[str, str | int | float | bool | None] | None = None  # scalars for the audit record
    after: Callable[[], None] | None = None  # runs once the reply is built (restart)
    erased: tuple[str, ...] = ()  # an erased person's id and name: kept replies naming them are dropped


Handler = Callable[[Context, dict[str, Any]], Done]


def settable_keys() -> frozenset[str]:
    return remote_keys()


def _not_found(person_id: str) -> CommandError:
    return CommandError(ErrorCode.NOT_FOUND, f"no person with id {person_id} on this device")


# ------------------------------------------------------------------------------------ handlers


def ping(ctx: Context, args: dict[str, Any]) -> Done:
    return Done({"pong": True, "at": utc_iso(ctx.now)})


def get_status(ctx: Context, args: dict[str, Any]) -> Done:
    return Done(dict(ctx.services.status()))


def get_telemetry(ctx: Context, args: dict[str, Any]) -> Done:
    """The last hour of telemetry as published, thinned (`since`: only documents later than that time), so a
    console started later can still plot the hour; an agent that publishes none answers with no points."""
    since = datetime.fromisoformat(args["since"]) if "since" in args else None
    history = ctx.services.telemetry_history
    if history is None:
        empty: TelemetryHistoryPage = {
            "at": utc_iso(ctx.now),
            "history_seconds": 0.0,
            "spacing_seconds": 0.0,
            "points": [],
        }
        return Done(empty)
    page = history(since)
    return Done(page, None, {"points": len(page["points"])})


def _shown(ctx: Context, person: dict[str, Any]) -> dict[str, Any]:
    """A person as a reply shows them: replies go to topics other clients may read, so without
    `events.include_names` the name stays on the device."""
    if ctx.services.get_settings().events.include_names:
        return person
    return {key: value for key, value in person.items() if key != "name"}


def list_people(ctx: Context, args: dict[str, Any]) -> Done:
    """A page of people (`offset`, `limit`, default the first PEOPLE_PAGE); `total` says how many there are."""
    models = ctx.services.get_settings().models
    offset, limit = args.get("offset", 0), args.get("limit", PEOPLE_PAGE)
    listing = ctx.store.listing(embedder_id(models.dir, models.embedder), offset=offset, limit=limit)
    page: PeoplePage = {
        "model_id": listing["model_id"],
        "people": [_person_row(ctx, person) for person in listing["people"]],
        **reenrollment_count(listing["people_needing_reenrollment"]),
        "total": listing["total"],
        "offset": offset,
    }
    return Done(page)


def _person_row(ctx: Context, person: dict[str, Any]) -> PersonRow:
    """One person of `GalleryStore.listing` as list_people shows them (no name without `events.include_names`)."""
    row: PersonRow = {
        "id": person["id"],
        "name": person["name"],
        "external_ref": person["external_ref"],
        "consent": person["consent"],
        "created_at": person["created_at"],
        "updated_at": person["updated_at"],
        "templates": person["templates"],
        "adaptive_templates": person["adaptive_templates"],
        **reenrollment_flag(person["needs_reenrollment"]),
    }
    if not ctx.services.get_settings().events.include_names:
        del row["name"]
    return row


def _consent(ctx: Context, args: dict[str, Any]) -> Consent | None:
    if "consent" not in args:
        return None
    given = args["consent"]
    given_by = given.get("given_by") or args.get("name") or args.get("person_id") or ""
    return Consent(given_by, utc_iso(ctx.now), given["reference"], given.get("purpose"))


def enroll(ctx: Context, args: dict[str, Any]) -> Done:
    """The CLI's enrollment, photos from the request; neither they nor their bytes come back. With
    `from_camera`, a capture on the device's own camera instead (`_enroll_from_camera`)."""
    if "from_camera" in args:
        return _enroll_from_camera(ctx, args)
    person_id = args.get("person_id")
    if person_id and ctx.store.get_person(person_id) is None:
        raise _not_found(person_id)
    photos = [(image.get("label") or f"image {i + 1}", image["data"]) for i, image in enumerate(args["images"])]
    if len({label for label, _ in photos}) != len(photos):
        raise CommandError(ErrorCode.BAD_REQUEST, "args.images: labels must be unique")
    consent = _consent(ctx, args)
    enroller = ctx.services.enroller_factory(ctx.store)
    try:
        with ctx.services.gallery.writing(ctx.store) as changed:
            result = enroller.enroll(
                photos,
                actor=ctx.actor,
                name=args.get("name"),
                person_id=person_id,
                external_ref=args.get("external_ref"),
                consent=consent,
                force=args.get("force", False),
            )
            changed.add(result.person.id)
    except EnrollmentError as exc:
        raise CommandError(ErrorCode.BAD_REQUEST, str(exc)) from None
    return _enrolled(ctx, result, "photos")


def _enrolled(ctx: Context, result: EnrollmentResult, faces: str, **details: str) -> Done:
    """The reply to an enrollment: the person, and for each face (photo or view) whether it became a template."""
    outcomes = [
        {"label": o.label, "accepted": o.accepted, "reason": o.reason, "template_id": o.template_id}
        for o in result.photos
    ]
    data = {
        "person": _shown(ctx, {"id": result.person.id, "name": result.person.name}),
        "created": result.created,
        "templates_added": result.templates_added,
        faces: outcomes,
    }
    return Done(data, result.person.id, {"templates_added": result.templates_added, **details})


# -------------------------------------------------------------------------- corrections by event id


def _corrections(ctx: Context) -> Corrections:
    window = ctx.services.feedback
    if window is None:
        raise CommandError(ErrorCode.CONFLICT, "this agent keeps no decided tracks (run it as `faceagent run`)")
    store = ctx.store
    settings = ctx.services.get_settings()
    return Corrections(window, store, ctx.services.gallery, ctx.services.enroller_factory(store), settings)


def _correcting(ctx: Context, event_id: str, run: Callable[[Corrections], Done]) -> Done:
    """`run` with the expected refusals as error replies: unknown or expired event, no such person, conflict."""
    try:
        return run(_corrections(ctx))
    except CorrectionError as exc:
        code = ErrorCode.NOT_FOUND if exc.kind == "not_found" else ErrorCode.CONFLICT
        raise CommandError(code, str(exc)) from None
    except EnrollmentError as exc:
        raise CommandError(ErrorCode.BAD_REQUEST, f"event {event_id}: {exc}") from None


def wrong_person(ctx: Context, args: dict[str, Any]) -> Done:
    """That face was not the person the event named: a negative for them, their templates from it taken back."""
    event_id = args["event_id"]

    def run(corrections: Corrections) -> Done:
        done = corrections.wrong_person(event_id, actor=ctx.actor)
        data = {
            "event_id": event_id,
            "person_id": done.person_id,
            "negative_id": done.negative_id,
            "templates_deleted": done.templates_deleted,
        }
        return Done(data, done.person_id, {"event_id": event_id, "templates_deleted": done.templates_deleted})

    return _correcting(ctx, event_id, run)


def is_person(ctx: Context, args: dict[str, Any]) -> Done:
    """The event's face was `person_id`: its best views become their templates."""
    event_id, force = args["event_id"], args.get("force", False)

    def run(corrections: Corrections) -> Done:
        result = corrections.is_person(event_id, args["person_id"], actor=ctx.actor, force=force)
        return _enrolled(ctx, result, "views", event_id=event_id)

    return _correcting(ctx, event_id, run)


def enroll_from_event(ctx: Context, args: dict[str, Any]) -> Done:
    """The event's unknown face becomes a new person (consent required)."""
    event_id, given = args["event_id"], args["consent"]
    consent = Consent(given.get("given_by") or args["name"], utc_iso(ctx.now), given["reference"], given.get("purpose"))

    def run(corrections: Corrections) -> Done:
        result = corrections.enroll_from_event(
            event_id,
            name=args["name"],
            consent=consent,
            actor=ctx.actor,
            external_ref=args.get("external_ref"),
            force=args.get("force", False),
        )
        return _enrolled(ctx, result, "views", event_id=event_id)

    return _correcting(ctx, event_id, run)


def _enroll_from_camera(ctx: Context, args: dict[str, Any]) -> Done:
    """Arm a capture window (`from_camera: {seconds, views}`), or report on it or cancel it (`from_camera:
    {capture_id, cancel}`): IN_PROGRESS with the views so far, then SUCCEEDED, FAILED with the reason, or
    CANCELED, as a model update's job reports. The views are stored by the device once collected, polled or not."""
    camera = ctx.services.camera
    if camera is None:
        raise CommandError(ErrorCode.CONFLICT, "this agent has no camera to enroll from (run it as `faceagent run`)")
    options = args["from_camera"]
    if "capture_id" in options:
        data = camera.cancel(options["capture_id"]) if options.get("cancel") else camera.status(options["capture_id"])
    else:
        person_id = args.get("person_id")
        if person_id and ctx.store.get_person(person_id) is None:
            raise _not_found(person_id)
        consent = _consent(ctx, args)
        if consent is None:
            raise CommandError(ErrorCode.BAD_REQUEST, "args.consent: the camera needs a consent reference")
        request = CaptureRequest(ctx.actor, consent, args.get("name"), person_id, args.get("external_ref"))
        asked = {key: options[key] for key in ("views", "seconds") if key in options}
        data = camera.start(replace(request, **asked))
    if "person" in data:
        data = data | {"person": _shown(ctx, data["person"])}
    details = {"capture_id": data["capture_id"], "capture_status": data["status"], "views": data["views"]}
    target = data["person"]["id"] if "person" in data else args.get("person_id")
    return Done(data, target, details)


def _person_by(ctx: Context, args: dict[str, Any]) -> Person:
    if "person_id" in args:
        person = ctx.store.get_person(args["person_id"])
        if person is None:
            raise _not_found(args["person_id"])
        return person
    name = args["name"].strip()
    people = [p for p in ctx.store.list_people() if p.name == name]
    if not people:
        raise CommandError(ErrorCode.NOT_FOUND, "no person of that name on this device")
    if len(people) > 1:
        ids = ", ".join(p.id for p in people)
        raise CommandError(ErrorCode.CONFLICT, f"{len(people)} people have that name ({ids}): give a person_id")
    return people[0]


def delete_person(ctx: Context, args: dict[str, Any]) -> Done:
    """Erasure: the store first (templates, events, chips), then the live matcher."""
    person = _person_by(ctx, args)
    with ctx.services.gallery.writing(ctx.store) as changed:
        counts = ctx.store.delete_person(person.id, actor=ctx.actor)
        changed.add(person.id)
    if ctx.services.feedback is not None:
        counts["feedback_entries"] = ctx.services.feedback.forget_person(person.id)
    return Done({"person_id": person.id, "deleted": counts}, person.id, erased=(person.id, person.name))


def update_person(ctx: Context, args: dict[str, Any]) -> Done:
    person_id = args["person_id"]
    if ctx.store.get_person(person_id) is None:
        raise _not_found(person_id)
    with ctx.services.gallery.writing(ctx.store) as changed:
        person = ctx.store.update_person(
            person_id, name=args.get("name"), external_ref=args.get("external_ref"), actor=ctx.actor
        )
        changed.add(person.id)
    shown = _shown(ctx, {"id": person.id, "name": person.name, "external_ref": person.external_ref})
    return Done({"person": shown}, person.id)


def get_config(ctx: Context, args: dict[str, Any]) -> Done:
    """The effective settings with secrets hidden, including a password written into a broker URL."""
    current = ctx.services.get_settings()
    settings = redact_secrets(settings_to_dict(current))
    try:
        remote = sorted(read_remote(remote_settings_path(current.gallery.path)))
    except ConfigError:
        remote = []  # invalid: ignored at start (and reported in status)
    reply = {"settings": settings, "settable": sorted(settable_keys()), "remote": remote}
    if ctx.services.matching is not None:  # unset figures show as null in settings; these are the ones in use
        reply["matching"] = ctx.services.matching().describe()
    return Done(reply)


def set_config(ctx: Context, args: dict[str, Any]) -> Done:
    """Change settable keys in the remote overlay (`settings.remote.toml` beside the gallery, written
    atomically, 0600), then make them live. The local file in /etc/faceagent is never written: it stays the
    operator's, and the service user cannot write it anyway. The running settings keep their command-line
    overrides and installed models; audit retention cannot go below `audit_floor`."""
    values: dict[str, Any] = args["values"]
    refused = sorted(set(values) - settable_keys())
    if refused:
        raise CommandError(ErrorCode.BAD_REQUEST, f"not settable remotely: {', '.join(refused)} (see get_config)")
    local = _local_settings(ctx)
    current = ctx.services.get_settings()
    in_use = ctx.services.matching().describe() if ctx.services.matching is not None else {}  # before the change
    overlay = remote_settings_path(current.gallery.path)
    try:
        remote = read_remote(overlay)
    except ConfigError:
        remote = {}  # a corrupt overlay was ignored at start; this one replaces it
    remote |= values
    try:
        next_start = apply_remote(local, remote, source="set_config")  # what the next start will load
        updated = with_values(current, values, source="set_config")  # the running settings, overrides kept
    except ConfigError as exc:
        raise CommandError(ErrorCode.BAD_REQUEST, str(exc)) from None
    sections: dict[str, dict[str, Any]] = {}
    for key in sorted(remote):
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = _setting(next_start, key)
    header = f"# remote settings: written by faceagent set_config ({ctx.actor}, {utc_iso(ctx.now)}), laid over\n"
    header += f"# {ctx.services.settings_path or 'the built-in defaults'}; delete this file to drop them\n"
    text = header + values_to_toml(sections)
    written = {f"{s}.{k}": v for s, table in tomllib.loads(text).items() for k, v in table.items()}
    if apply_remote(local, written, source="set_config") != next_start:
        raise RuntimeError("the remote settings do not load back to the values set")
    write_atomically(overlay, text.encode("utf-8"), mode=0o600)
    ctx.services.apply_settings(updated)
    changed = {key: _setting(updated, key) for key in sorted(values)}
    details: dict[str, Any] = {}
    for key in sorted(values):  # the audit record: every change with its old and new value
        old = _setting(current, key)  # an unset matching figure: the one that was in use
        details[f"{key}.old"] = in_use[key]["value"] if old is None and key in in_use else old
        details[f"{key}.new"] = changed[key]
    return Done({"changed": changed, "persisted": str(overlay)}, None, details)


def _local_settings(ctx: Context) -> Settings:
    """The local file as it is now (the operator may have edited it): the floor for audit retention."""
    try:
        return load_settings(ctx.services.settings_path)
    except ConfigError as exc:
        raise CommandError(ErrorCode.CONFLICT, f"the local settings file is invalid; fix it first: {exc}") from None


def _setting(settings: Settings, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(settings, section), name)


def purge_events(ctx: Context, args: dict[str, Any]) -> Done:
    """Events older than `older_than_days` (default: retention.events_days; 0: all); audit records by
    the configured retention, never younger than `audit_floor`: a remote command cannot wipe the log
    that records what remote commands did."""
    retention = ctx.services.get_settings().retention
    days = float(args.get("older_than_days", retention.events_days))
    try:
        floor = audit_floor(load_settings(ctx.services.settings_path))
    except ConfigError:
        floor = audit_floor(ctx.services.get_settings())
    audit_days = max(retention.audit_days, floor)
    counts = ctx.store.purge_expired(events_days=days, audit_days=audit_days, now=ctx.now)
    return Done({"purged": counts, "older_than_days": days}, None, {"events": counts["events"]})


def restart(ctx: Context, args: dict[str, Any]) -> Done:
    wait = ctx.services.restart_wait() if ctx.services.restart_wait is not None else 0.0
    if wait > 0:
        message = f"restart refused: at most one a minute, the last was too recent; retry in {math.ceil(wait)} s"
        raise CommandError(ErrorCode.RATE_LIMITED, message)
    return Done({"restarting": True}, after=ctx.services.request_restart)


# What a model_update audit record keeps: the job's progress and outcome, never model bytes.
_MODEL_AUDIT = (
    "job_id",
    "model_id",
    "version",
    "sha256",
    "bytes_received",
    "step",
    "reason",
    "templates_rebuilt",
    "people_carried_over",
)


def model_update(ctx: Context, args: dict[str, Any]) -> Done:
    """One phase of a model update job (`agent/modelupdate/update.py`); the job's status is in the data."""
    updates = ctx.services.model_updates
    if updates is None:
        raise CommandError(ErrorCode.CONFLICT, "this agent does not take model updates (run it as `faceagent run`)")
    data = updates.run(args, open_store=ctx.open_store, actor=ctx.actor, now=ctx.now)
    details = {"phase": args["phase"], "job_status": data["status"]} | {
        key: data[key] for key in _MODEL_AUDIT if data.get(key) is not None
    }
    if args["phase"] == "chunk":
        details["index"] = args["index"]
    return Done(data, None, details)


def get_audit(ctx: Context, args: dict[str, Any]) -> Done:
    """A page of the device's audit log, newest first (`limit`, default AUDIT_PAGE; `before`: only records
    older than that `seq`), local CLI actions included; `next_before` asks for the next older page."""
    limit = args.get("limit", AUDIT_PAGE)
    rows = ctx.store.audit_log(limit + 1, before=args.get("before"))  # one more: is there an older page?
    records = [
        AuditRecord(
            seq=row["seq"],
            at=row["at"],
            actor=row["actor"],
            action=row["action"],
            target=row["target"],
            details=row["details"],
        )
        for row in rows[:limit]
    ]
    page: AuditPage = {"records": records, "next_before": records[-1]["seq"] if len(rows) > limit else None}
    return Done(page, None, {"records": len(records)})


def refusing_full_storage(handler: Handler) -> Handler:
    """A full disk (the gallery's SQLITE_FULL, or ENOSPC writing the settings or a model) becomes a
    `storage_full` refusal; a gallery failure is also reported to the service's storage health."""

    @functools.wraps(handler)
    def guarded(ctx: Context, args: dict[str, Any]) -> Done:
        try:
            return handler(ctx, args)
        except (OSError, FaceagentError) as exc:
            if not is_disk_full(exc):
                raise
            if isinstance(exc, StorageFullError) and ctx.services.storage is not None:
                ctx.services.storage.write_failed(exc)
            where = f" for {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
            problem = str(exc) if isinstance(exc, FaceagentError) else f"no space left on the device{where}"
            message = f"{problem}; nothing was changed: retry once space is freed"
            raise CommandError(ErrorCode.STORAGE_FULL, message) from None

    return guarded


HANDLERS: dict[str, Handler] = {
    name: refusing_full_storage(handler)
    for name, handler in {
        Command.PING: ping,
        Command.GET_STATUS: get_status,
        Command.GET_TELEMETRY: get_telemetry,
        Command.LIST_PEOPLE: list_people,
        Command.ENROLL: enroll,
        Command.DELETE_PERSON: delete_person,
        Command.UPDATE_PERSON: update_person,
        Command.GET_CONFIG: get_config,
        Command.SET_CONFIG: set_config,
        Command.PURGE_EVENTS: purge_events,
        Command.RESTART: restart,
        Command.MODEL_UPDATE: model_update,
        Command.GET_AUDIT: get_audit,
        Command.WRONG_PERSON: wrong_person,
        Command.IS_PERSON: is_person,
        Command.ENROLL_FROM_EVENT: enroll_from_event,
    }.items()
}
