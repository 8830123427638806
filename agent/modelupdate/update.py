"""Model updates over MQTT (`model_update`), shaped like AWS IoT Jobs: one job at a time, in phases.

    begin   signed metadata                       -> IN_PROGRESS (nothing is accepted unless it verifies)
    chunk   the bytes in order, base64            -> IN_PROGRESS and the bytes received; a repeated chunk
            is acknowledged again, a gap is refused naming the chunk expected, and the job goes on
    commit  size, sha256 and signature; the test faces in a child process (`agent.modelupdate.check`); install;
            the live pipeline swapped between frames -> SUCCEEDED, or FAILED with the step and the reason
    abort   -> CANCELED          status   the job in progress, else the last one

Why it is built so:
- A model decides who is let through, so it is treated as code: its metadata (id, role, file, version,
  sha256, size and manifest entry, a threshold being as decisive as the weights) must carry an Ed25519
  signature by a release key (`models.release_keys`), on top of the command key that signs each
  `model_update` command. The roles are separate: a command key cannot sign a model (an operator who may
  enroll people cannot thereby replace the recognizer), nor a release key a command. The job id and the
  device are not signed, so one signed release serves a whole fleet.
- Nothing is written into the installed package: models go to the state directory (`agent.modelupdate.install`).
  Chunks are fsynced into its `.staging/<job_id>`, removed when the job ends and at start-up (a restart
  ends a job: send it again).
- Every failure leaves the models in use: the candidate is checked before it is installed, and if the live
  agent cannot switch to it after all, the previous manifest is put back.
- A new embedder id means new templates: the live matcher holds only that model's, people without one are
  reported for re-enrollment, and with `gallery.keep_chips` on the kept chips are embedded again.
- A fused embedder arrives in two releases (`agent.modelupdate.entries`): its members that are missing, signed
  `standby` (installed and checked, the role's default kept), then its definition, refused at begin unless
  every member is installed with the sha256 it names; a new build of a member of the fused embedder in use is
  refused. `standby` enters the signed message only where true, so older releases verify as they did.
- Releases only move forward, or an old signed release (a model since found weak) could be replayed under
  a new job id. `version` (signed) is 1-4 dotted whole numbers, compared as a tuple of integers with
  trailing zeros dropped: 2026.11.1 > 2026.9 > 2 and 2026.11 == 2026.11.0. A commit of a version not
  above the role's floor ends FAILED at `verify`. The floor is the highest of: the versions of the role's
  models in the bundled manifest (the shipped models are release 1) and in the manifest in use, and
  `release-floor.json` in the state models directory, raised by a successful install only (after the live
  agent switched to it; never by a failure or a rollback), so it survives restarts and manifest rollbacks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands.schema import MODEL_CHUNK_BYTES, VERSION, CommandError, ErrorCode
from agent.commands.signing import verifying_key
from agent.errors import FaceagentError
from agent.files import write_atomically
from agent.identity import utc_iso
from agent.modelupdate.check import run_check
from agent.modelupdate.entries import ReleaseRefused, check_fused, check_member_kept, is_definition, release_entry
from agent.modelupdate.install import (
    RELEASE_FLOOR,
    ModelsFolder,
    carry_templates,
    chips_fit,
    load_embedder,
    rebuild_templates,
    stored_name,
)
from agent.vision.modelstore import MANIFEST_NAME, ModelSpec, ModelStore, default_models_dir
from agent.wire import reenrollment_count

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from agent.config import Settings
    from agent.gallery.store import GalleryStore
    from agent.gallery.sync import GalleryWrites

MAX_MODEL_BYTES = 64 * 1024 * 1024
JOB_IDLE_SECONDS = 600.0  # a job silent this long gives way to the next `begin`
MODEL_TAG = b"faceagent-model-v1"
SIGNED_FIELDS = ("model_id", "role", "file", "version", "sha256", "size", "entry")
STANDBY = "standby"  # signed where true only: a release signed before it existed verifies as it did
SET_BY_UPDATE = ("id", "role", "file", "sha256", "bytes", "version", "installed")  # not overridable in `entry`
STAGING = ".staging"
_SPARE_BYTES = 16 * 1024 * 1024

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TIMED_OUT = "TIMED_OUT"


# ------------------------------------------------------------------------------------ signatures


def model_message(meta: Mapping[str, Any]) -> bytes:
    """The bytes a model's publisher signs: a tag, then the signed fields as canonical JSON; `standby` among
    them only when true, so every release without it has the message it had before the flag existed."""
    body = {name: meta.get(name, {} if name == "entry" else None) for name in SIGNED_FIELDS}
    if meta.get(STANDBY) is True:
        body[STANDBY] = True
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return MODEL_TAG + b"\n" + text.encode("utf-8")


def sign_model(key: Ed25519PrivateKey, meta: Mapping[str, Any]) -> str:
    return base64.b64encode(key.sign(model_message(meta))).decode()


def verify_model(keys: Mapping[str, Ed25519PublicKey], meta: Mapping[str, Any], signature: str | None) -> str:
    """The id of the key that signed `meta`; CommandError (unauthorized) otherwise."""
    if signature is None:
        raise CommandError(ErrorCode.UNAUTHORIZED, "a model update must be signed (ctl model-update --model-key)")
    if not keys:
        message = (
            "no models.release_keys configured, so no model can be installed: make one with "
            "`faceagent ctl keygen --role release KEY_FILE` and add its public key to [models] release_keys"
        )
        raise CommandError(ErrorCode.UNAUTHORIZED, message)
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise CommandError(ErrorCode.UNAUTHORIZED, "args.signature is not base64") from None
    identity = verifying_key(keys, raw, model_message(meta))
    if identity is None:
        message = "the model signature does not verify with any release key (models.release_keys)"
        raise CommandError(ErrorCode.UNAUTHORIZED, message)
    return identity


# ------------------------------------------------------------------------------------ versions


def release_version(text: str) -> tuple[int, ...]:
    """The comparable form of a release version (see the module docstring); ValueError if it is not one."""
    if not isinstance(text, str) or not VERSION.fullmatch(text):
        raise ValueError(f"{text!r:.80} is not a release version (1-4 dotted whole numbers, e.g. 2026.11.1)")
    parts = [int(part) for part in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _manifest_versions(models_dir: Path, role: str) -> list[str]:
    """The versions a manifest gives the role's models; an entry without a valid one counts for nothing."""
    try:
        entries = json.loads((models_dir / MANIFEST_NAME).read_text(encoding="utf-8"))["models"]
        versions = [entry.get("version") for entry in entries if entry.get("role") == role]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return [v for v in versions if isinstance(v, str) and VERSION.fullmatch(v)]


class ReleaseFloor:
    """The lowest version each role may still be updated to (exclusive), kept in the state models directory."""

    def __init__(self, models_dir: Path) -> None:
        self.path = Path(models_dir) / RELEASE_FLOOR

    def _recorded(self) -> dict[str, str]:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # a damaged floor must not open the door to every old release
            raise UpdateFailed("verify", f"{self.path} is unreadable ({exc}): no release can be checked") from exc
        if not isinstance(document, dict):
            raise UpdateFailed("verify", f"{self.path} is not a JSON object: no release can be checked")
        return {role: v for role, v in document.items() if isinstance(v, str) and VERSION.fullmatch(v)}

    def highest(self, role: str, *manifests: Path) -> str:
        """The highest of the recorded version and those the manifests in `manifests` give the role ("0": none)."""
        found = [self._recorded().get(role, "0")]
        for models_dir in manifests:
            found += _manifest_versions(models_dir, role)
        return max(found, key=release_version)

    def raise_to(self, role: str, version: str) -> None:
        recorded = self._recorded()
        if release_version(version) > release_version(recorded.get(role, "0")):
            write_atomically(self.path, json.dumps(recorded | {role: version}, indent=2).encode() + b"\n")


# ------------------------------------------------------------------------------------ jobs


class UpdateFailed(FaceagentError):
    """A commit step failed: the job ends FAILED and the models in use stay."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step, self.reason = step, reason


@dataclass
class Job:
    job_id: str
    meta: dict[str, Any]  # the signed fields
    signature: str
    signer: str
    folder: Path
    touched: float
    chunks: list[str] = field(default_factory=list)  # sha256 of each chunk received, by index
    received: int = 0
    status: JobStatus = JobStatus.IN_PROGRESS
    outcome: dict[str, Any] = field(default_factory=dict)  # the step and reason of a failure, or the result

    @property
    def staged(self) -> Path:
        return self.folder / "model"

    def report(self) -> dict[str, Any]:
        meta = self.meta
        head = {"job_id": self.job_id, "status": str(self.status), "model_id": meta["model_id"], "role": meta["role"]}
        progress = {"bytes_received": self.received, "bytes_total": meta["size"], "next_index": len(self.chunks)}
        return head | {"version": meta["version"]} | progress | self.outcome


class ModelUpdater:
    """The device's one model-update job and everything a commit needs; used from the command thread only.

    `apply(models_dir)` makes the live agent use the manifest in `models_dir` (the service builds the new
    pipeline and that embedder's matcher aside, then swaps both in between two frames) or raises; templates
    rebuilt afterwards reach the live matcher through `gallery`, like every other gallery write.
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        get_settings: Callable[[], Settings],
        keys: Mapping[str, Ed25519PublicKey],  # release keys (models.release_keys), never command keys
        apply: Callable[[Path], None],
        gallery: GalleryWrites,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.folder = ModelsFolder(self.models_dir)
        self.floor = ReleaseFloor(self.models_dir)
        self.get_settings, self.keys, self.apply, self.gallery, self.clock = get_settings, keys, apply, gallery, clock
        self.job: Job | None = None
        self.last: Job | None = None
        shutil.rmtree(self.models_dir / STAGING, ignore_errors=True)
        self.folder.tidy()  # seeded copies left by a first update that a crash cut short

    def run(self, args: dict[str, Any], *, open_store: Callable[[], GalleryStore], actor: str, now: datetime) -> dict:
        """One phase; the reply's data. Refusals raise CommandError; a failed commit is a FAILED job."""
        phase = args["phase"]
        if phase == "begin":
            return self._begin(args).report() | {"max_chunk_bytes": MODEL_CHUNK_BYTES}
        if phase == "chunk":
            return self._chunk(self._current(args["job_id"]), args["index"], args["data"])
        if phase == "commit":
            return self._commit(self._current(args["job_id"]), open_store, actor, now)
        if phase == "abort":
            return self._end(self._current(args["job_id"]), JobStatus.CANCELED, {})
        return self._status(args.get("job_id"))

    # ------------------------------------------------------------------------------- transfer

    def _begin(self, args: dict[str, Any]) -> Job:
        if args["job_id"] in (".", ".."):  # names its folder: `.staging/..` is the models directory itself
            raise CommandError(ErrorCode.BAD_REQUEST, "args.job_id: must not be . or ..")
        meta: dict[str, Any] = {name: args.get(name) for name in SIGNED_FIELDS} | {"entry": args.get("entry", {})}
        if args.get(STANDBY) is True:
            meta[STANDBY] = True
        if self.job is not None and self.job.job_id == args["job_id"] and self.job.meta == meta:
            return self.job  # the same begin again: the job goes on where it is
        if meta["size"] > MAX_MODEL_BYTES:
            raise CommandError(ErrorCode.TOO_LARGE, f"a model may have at most {MAX_MODEL_BYTES} bytes")
        taken = sorted(set(meta["entry"]) & set(SET_BY_UPDATE))
        if taken:
            raise CommandError(ErrorCode.BAD_REQUEST, f"args.entry: {taken[0]!r} is set by the update itself")
        signer = verify_model(self.keys, meta, args.get("signature"))
        self._refuse_unusable(meta)
        if self.job is not None:
            if self.clock() - self.job.touched < JOB_IDLE_SECONDS:
                job = self.job
                progress = f"{job.received} of {job.meta['size']} bytes"
                raise CommandError(ErrorCode.CONFLICT, f"job {job.job_id} is in progress ({progress}): abort it first")
            self._end(self.job, JobStatus.TIMED_OUT, {"reason": f"no activity for {JOB_IDLE_SECONDS:g} s"})
        if self.last is not None and self.last.job_id == args["job_id"]:
            raise CommandError(ErrorCode.CONFLICT, f"job {args['job_id']} has ended ({self.last.status}): use a new id")
        self.models_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._refuse_without_room(meta["size"])
        folder = self.models_dir / STAGING / args["job_id"]
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        job = Job(args["job_id"], meta, args["signature"], signer, folder, self.clock())
        job.staged.write_bytes(b"")
        self.job = job
        log.info("model update %s: %s %s version %s, %d bytes", job.job_id, meta["role"], meta["model_id"],
                 meta["version"], meta["size"])  # fmt: skip
        return job

    def _refuse_unusable(self, meta: dict[str, Any]) -> None:
        """An update the agent would not use, that would relabel a model of another role, or that has no right
        manifest entry here (`agent.modelupdate.entries`): refused before any byte of it is accepted."""
        role, model_id = meta["role"], meta["model_id"]
        pinned = getattr(self.get_settings().models, role)
        if pinned and pinned != model_id and not meta.get(STANDBY):
            message = f"models.{role} pins {pinned} in the settings, so {model_id} would never be used: update {pinned}"
            raise CommandError(ErrorCode.CONFLICT, message)
        existing = ModelStore(self._live_dir()).specs.get(model_id)
        if existing is not None and existing.role != role:
            raise CommandError(ErrorCode.BAD_REQUEST, f"{model_id} is a {existing.role}, not a {role}")
        try:
            self._refuse_wrong_entry(meta)
        except FaceagentError as exc:
            raise CommandError(ErrorCode.CONFLICT, str(exc)) from None

    def _refuse_wrong_entry(self, meta: dict[str, Any]) -> None:
        """ReleaseRefused when the release has no right entry on this device as its models stand now."""
        live = ModelStore(self._live_dir())
        current = live.spec(getattr(self.get_settings().models, meta["role"]), meta["role"])
        if meta.get(STANDBY) and meta["model_id"] == current.id:
            message = f"{current.id} is the {meta['role']} in use: a new version of it cannot wait on standby"
            raise ReleaseRefused(message)
        check_member_kept(meta, current)
        entry = release_entry(live, meta, current)
        if is_definition(meta["file"]):
            check_fused(live, meta, entry)

    def _refuse_without_room(self, size: int) -> None:
        live = ModelStore(self._live_dir())
        seeding = 0 if (self.models_dir / MANIFEST_NAME).is_file() else sum(s.bytes for s in live.specs.values())
        free = shutil.disk_usage(self.models_dir).free
        if free < size + seeding + _SPARE_BYTES:
            message = f"only {free} bytes free in {self.models_dir} for a {size}-byte model"
            raise CommandError(ErrorCode.TOO_LARGE, message)

    def _chunk(self, job: Job, index: int, data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        job.touched = self.clock()
        if index < len(job.chunks):
            if job.chunks[index] != digest:
                raise CommandError(ErrorCode.CONFLICT, f"chunk {index} was received before with other bytes")
            return job.report() | {"duplicate": True}
        if index > len(job.chunks):
            message = f"chunk {index} leaves a gap: the next chunk is {len(job.chunks)}"
            raise CommandError(ErrorCode.BAD_REQUEST, message)
        if not data or job.received + len(data) > job.meta["size"]:
            size = job.meta["size"]
            raise CommandError(ErrorCode.BAD_REQUEST, f"chunk {index} is empty or goes past the {size} bytes declared")
        with open(job.staged, "r+b") as stream:
            stream.seek(job.received)
            stream.write(data)
            stream.truncate()
            stream.flush()
            os.fsync(stream.fileno())
        job.chunks.append(digest)
        job.received += len(data)
        return job.report() | {"duplicate": False}

    def _current(self, job_id: str) -> Job:
        if self.job is not None and self.job.job_id == job_id:
            return self.job
        if self.last is not None and self.last.job_id == job_id:
            raise CommandError(ErrorCode.CONFLICT, f"job {job_id} has ended ({self.last.status})")
        raise CommandError(ErrorCode.NOT_FOUND, f"no model update job {job_id} on this device")

    def _status(self, job_id: str | None) -> dict[str, Any]:
        for job in (self.job, self.last):
            if job is not None and job_id in (None, job.job_id):
                return job.report()
        if job_id is not None:
            raise CommandError(ErrorCode.NOT_FOUND, f"no model update job {job_id} on this device")
        return {"job_id": None, "status": "NONE", "max_chunk_bytes": MODEL_CHUNK_BYTES}

    def _end(self, job: Job, status: JobStatus, outcome: dict[str, Any]) -> dict[str, Any]:
        job.status, job.outcome = status, outcome
        self.job, self.last = None, job
        shutil.rmtree(job.folder, ignore_errors=True)
        self.folder.tidy()
        log.info("model update %s: %s %s", job.job_id, status, outcome.get("reason") or "")
        return job.report()

    # ------------------------------------------------------------------------------- commit

    def _commit(self, job: Job, open_store: Callable[[], GalleryStore], actor: str, now: datetime) -> dict:
        try:
            result = self._go_live(job, open_store, actor, now)
        except UpdateFailed as exc:
            log.warning("model update %s failed at %s: %s", job.job_id, exc.step, exc.reason)
            return self._end(job, JobStatus.FAILED, {"step": exc.step, "reason": exc.reason})
        return self._end(job, JobStatus.SUCCEEDED, result)

    def _go_live(self, job: Job, open_store: Callable[[], GalleryStore], actor: str, now: datetime) -> dict:
        meta = job.meta
        self._verify(job)
        settings = self.get_settings()
        live_dir = self._live_dir()
        live = ModelStore(live_dir)
        before = {role: live.spec(getattr(settings.models, role), role) for role in ("detector", "embedder")}
        replaced = before[meta["role"]]
        stamp = {"installed": {"job_id": job.job_id, "signed_by": job.signer, "at": utc_iso(now)}}
        candidate = job.folder / "candidate"
        try:
            manifest = self.folder.candidate(live_dir, meta | stamp, replaced.id, job.staged, candidate)
        except (OSError, FaceagentError, ValueError, KeyError) as exc:
            raise UpdateFailed("install", f"could not stage it beside the models in use: {exc}") from exc
        standby = bool(meta.get(STANDBY))  # then the check is of the model installed, not of the default kept
        checked = replace(settings.models, **{meta["role"]: meta["model_id"]}) if standby else settings.models
        reference = live_dir if not standby or meta["model_id"] in live.specs else None  # None: nothing to drift from
        verdict = run_check(candidate, reference, checked)
        if not verdict.ok:
            raise UpdateFailed(verdict.step, verdict.reason or "it failed its check")
        previous = self.folder.install(job.staged, stored_name(meta["file"], meta["sha256"]), manifest, live_dir)
        unchanged = standby and live_dir.resolve() == self.models_dir.resolve()  # same models, read from here
        try:
            if not unchanged:
                self.apply(self.models_dir)
        except Exception as exc:
            self.folder.restore(previous)
            reason = f"the live agent could not switch to it ({exc}); the previous models run on"
            raise UpdateFailed("swap", reason) from exc
        try:
            self.floor.raise_to(meta["role"], meta["version"])
        except (OSError, FaceagentError) as exc:  # the manifest in use names the version too: the floor holds
            log.warning("model update %s: could not record release %s: %s", job.job_id, meta["version"], exc)
        result = {"sha256": meta["sha256"], "standby": standby}
        result |= {"previous": {"model_id": replaced.id, "sha256": replaced.sha256}}
        return result | {"check": verdict.figures} | self._templates(before["embedder"], open_store(), actor)

    def _verify(self, job: Job) -> None:
        meta = job.meta
        if job.received != meta["size"]:
            raise UpdateFailed("verify", f"truncated: {job.received} of the {meta['size']} bytes declared arrived")
        digest = hashlib.sha256(job.staged.read_bytes()).hexdigest()
        if digest != meta["sha256"]:
            raise UpdateFailed("verify", f"sha256 mismatch: the bytes received hash to {digest}, not {meta['sha256']}")
        try:
            verify_model(self.keys, meta, job.signature)
        except CommandError as exc:
            raise UpdateFailed("verify", exc.message) from None
        self._refuse_rollback(meta)
        try:
            self._refuse_wrong_entry(meta)
        except FaceagentError as exc:
            raise UpdateFailed("verify", str(exc)) from None

    def _refuse_rollback(self, meta: dict[str, Any]) -> None:
        """An older or equal release, however well signed, would undo a fix: see the module docstring."""
        role, version = meta["role"], meta["version"]
        floor = self.floor.highest(role, default_models_dir(), self._live_dir(), self.models_dir)
        if release_version(version) <= release_version(floor):
            reason = (
                f"version {version} is not above {floor}, the highest {role} release this device has installed "
                "or shipped with: an older or repeated release is refused"
            )
            raise UpdateFailed("verify", reason)

    def _live_dir(self) -> Path:
        return self.get_settings().models.dir or default_models_dir()

    # ------------------------------------------------------------------------------- templates

    def _templates(self, old: ModelSpec, store: GalleryStore, actor: str) -> dict[str, Any]:
        """After an embedder change: carry templates over where the new embedder takes the old one's as its own,
        rebuild from kept chips where allowed; who still needs re-enrollment."""
        settings = self.get_settings()
        models = ModelStore(self.models_dir)
        new = models.spec(settings.models.embedder, "embedder")
        rebuilt = carried = 0
        if new.id != old.id:  # copies need no chip
            with self.gallery.writing(store) as changed:
                people = carry_templates(store, models, new, actor)
                changed.update(people)
            carried = len(people)
        if new.id != old.id and settings.gallery.keep_chips:
            if chips_fit(models, old, new):  # a fused embedder keeps its first member's chip
                embedder = load_embedder(self.models_dir, new, settings.models)
                with self.gallery.writing(store) as changed:
                    added = rebuild_templates(store, embedder, old.id, actor)
                    changed.update(added)
                rebuilt = len(added)
            else:
                log.warning("kept chips were aligned for %s, not %s: people need re-enrollment", old.id, new.id)
        stale = len(store.people_needing_reenrollment(new.id))
        changes = {"embedder_changed": new.id != old.id, "templates_rebuilt": rebuilt, "people_carried_over": carried}
        return changes | reenrollment_count(stale)
