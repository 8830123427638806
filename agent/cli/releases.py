"""Model releases as the operator ships them: a release bundle, and its roll-out to devices.

A release bundle is the model file and, beside it, `<stem>.release.json`: the metadata a device's `model_update`
begin carries (model id, role, file, version, sha256, size, manifest entry, and `standby` when the model is to be
installed without becoming the role's default) with its Ed25519 signature by a release key. The model file is a
.tflite model or a fused embedder's definition (.json), whose entry names its members (agent/modelupdate/entries.py);
`manifest_entry` takes a release's entry from a manifest (the one scripts/build_models.py writes).
`faceagent ctl model-release` makes one where the release key is kept; whoever ships it
(`ctl model-update BUNDLE`, the console) needs only a command key, so the key that decides what may recognize
people never sits on an operator's machine. `ctl model-update MODEL --model-key KEY` signs and ships at once.

`roll_out` is the one way both `ctl` and the console send a release: begin, the chunks in order, commit. Devices
that take fleet-wide requests share one copy of each phase (the chunks cross the broker once for the fleet, not
once per device); a device that stays silent is asked once more on its own, one that refuses is dropped and
its job aborted; every device's reply to every phase is handed to `progress` as it comes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands.schema import MODEL_FILE, MODEL_ID, SHA256, VERSION
from agent.errors import FaceagentError
from agent.files import FileRefused, read_regular_file, write_atomically
from agent.link.operator import Operator
from agent.modelupdate.entries import ReleaseRefused, check_definition, is_definition
from agent.modelupdate.update import MAX_MODEL_BYTES, SET_BY_UPDATE, STANDBY, sign_model
from agent.wire import SCHEMA, Command

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BUNDLE_SUFFIX = ".release.json"
COMMIT_SECONDS = 600.0  # a commit checks the model on the device (about 15 s on a Pi 4) and swaps it in
MAX_BUNDLE_BYTES = 64 * 1024
ROLES = ("detector", "embedder")


class ReleaseError(FaceagentError):
    """A release that cannot be shipped: an unreadable bundle, a model that does not match it."""


@dataclass(frozen=True)
class Release:
    """A signed model release and its bytes."""

    meta: dict[str, Any]  # model_id, role, file, version, sha256, size, entry (standby): what the signature covers
    signature: str
    content: bytes = field(repr=False)

    @classmethod
    def signed(cls, content: bytes, key: Ed25519PrivateKey, *, file: str, **meta: Any) -> Release:
        """`content` released as `meta` (model_id, role, version, entry, standby), signed by the release `key`; a
        fused definition is checked against the members its entry lists first."""
        full = {**meta, "file": file, "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
        full.setdefault("entry", {})
        if full.pop(STANDBY, False):  # absent unless true: a plain release's message stays as it was
            full[STANDBY] = True
        if is_definition(file):
            try:
                check_definition(full, full["entry"])
            except ReleaseRefused as exc:
                raise ReleaseError(str(exc)) from None
        return cls(full, sign_model(key, full), content)

    def begin(self, job_id: str) -> dict[str, Any]:
        return {"phase": "begin", "job_id": job_id, **self.meta, "signature": self.signature}

    def chunks(self, job_id: str, chunk_bytes: int) -> list[dict[str, Any]]:
        """The chunk phases, in order (each about 4/3 of `chunk_bytes` of base64)."""
        starts = range(0, len(self.content), chunk_bytes)
        return [
            {"phase": "chunk", "job_id": job_id, "index": index, "data": self._piece(start, chunk_bytes)}
            for index, start in enumerate(starts)
        ]

    def _piece(self, start: int, size: int) -> str:
        return base64.b64encode(self.content[start : start + size]).decode()

    def describe(self) -> str:
        meta = self.meta
        standby = ", on standby" if meta.get(STANDBY) else ""
        return f"{meta['model_id']} {meta['version']} ({meta['role']}, {meta['size']} bytes{standby})"

    def write_bundle(self, folder: Path) -> Path:
        """`<folder>/<stem>.release.json` beside the model file, which must be there."""
        model = folder / self.meta["file"]
        if not model.is_file():
            raise ReleaseError(f"{model}: the model file must sit beside its release")
        path = folder / (Path(self.meta["file"]).stem + BUNDLE_SUFFIX)
        document = {"schema": SCHEMA, "release": self.meta, "signature": self.signature}
        write_atomically(path, (json.dumps(document, indent=2) + "\n").encode(), mode=0o644)
        return path


def read_bundle(path: Path) -> Release:
    """A bundle and the model beside it, checked here (shape, size, sha256) before anything is sent."""
    meta, signature = bundle_meta(path)
    try:
        content = read_regular_file(path.parent / meta["file"], MAX_MODEL_BYTES)
    except FileRefused as exc:
        raise ReleaseError(f"{path.parent / meta['file']}: {exc}") from None
    if len(content) != meta["size"] or hashlib.sha256(content).hexdigest() != meta["sha256"]:
        raise ReleaseError(f"{path}: {meta['file']} beside it is not the model this release signs")
    return Release(meta, signature, content)


def bundle_meta(path: Path) -> tuple[dict[str, Any], str]:
    """A bundle's signed metadata and signature, its shape checked; the model beside it is not read."""
    try:
        document = json.loads(read_regular_file(path, MAX_BUNDLE_BYTES))
    except (FileRefused, ValueError, RecursionError) as exc:
        raise ReleaseError(f"{path}: not a release bundle ({exc})") from None
    meta = document.get("release") if isinstance(document, dict) else None
    signature = document.get("signature") if isinstance(document, dict) else None
    if not isinstance(meta, dict) or not isinstance(signature, str):
        raise ReleaseError(f"{path}: not a release bundle (made by `faceagent ctl model-release`)")
    _check_meta(path, meta)
    return meta, signature


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    rules = {"model_id": MODEL_ID, "file": MODEL_FILE, "version": VERSION, "sha256": SHA256}
    for name, pattern in rules.items():
        if not isinstance(meta.get(name), str) or not pattern.fullmatch(meta[name]):
            raise ReleaseError(f"{path}: release.{name} is missing or malformed")
    if meta.get("role") not in ROLES:
        raise ReleaseError(f"{path}: release.role must be one of {', '.join(ROLES)}")
    size = meta.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_MODEL_BYTES:
        raise ReleaseError(f"{path}: release.size must be a whole number of bytes up to {MAX_MODEL_BYTES}")
    if not isinstance(meta.get("entry", {}), dict):
        raise ReleaseError(f"{path}: release.entry must be an object")
    if meta.get(STANDBY, True) is not True:
        raise ReleaseError(f"{path}: release.standby is true or absent")


def manifest_entry(manifest: Path, model_id: str, content: bytes) -> dict[str, Any]:
    """The manifest entry `manifest` gives `model_id`, without the fields a device sets itself, for a release of
    `content`, which must be the file that entry names."""
    try:
        document = json.loads(read_regular_file(manifest, MAX_BUNDLE_BYTES))
        entries = {entry["id"]: entry for entry in document["models"]}
    except (FileRefused, ValueError, RecursionError, KeyError, TypeError) as exc:
        raise ReleaseError(f"{manifest}: not a model manifest ({exc})") from None
    entry = entries.get(model_id)
    if not isinstance(entry, dict):
        raise ReleaseError(f"{manifest} has no entry {model_id!r} (it has {', '.join(sorted(map(str, entries)))})")
    digest = hashlib.sha256(content).hexdigest()
    if entry.get("sha256") != digest:
        raise ReleaseError(f"{manifest}: {model_id} is sha256 {entry.get('sha256')}, the file given is {digest}")
    return {key: value for key, value in entry.items() if key not in SET_BY_UPDATE}


def bundles(folder: Path) -> dict[str, Path]:
    """The bundles in `folder` by file name (the console's choice), newest name last."""
    return {path.name: path for path in sorted(folder.glob("*" + BUNDLE_SUFFIX)) if path.is_file()}


# ------------------------------------------------------------------------------------ roll-out

# (device, phase, the device's reply or None when silent): told of every reply as it comes
Progress = Callable[[str, Mapping[str, Any], dict | None], None]


@dataclass
class RollOut:
    """How a roll-out ended: each committed device's reply, and why each other device dropped out."""

    committed: dict[str, dict | None]
    dropped: dict[str, str]

    def succeeded(self) -> list[str]:
        return [d for d, reply in self.committed.items() if _data(reply).get("status") == "SUCCEEDED"]


def roll_out(
    operator: Operator,
    devices: list[str],
    release: Release,
    *,
    job_id: str,
    chunk_bytes: int,
    fleet: Collection[str] = (),
    progress: Progress | None = None,
) -> RollOut:
    """Begin, chunks and commit of one job on `devices`; `fleet`: those that take fleet-wide requests, only
    when `devices` are every online device (as `Operator.call`'s)."""
    shared = operator.fleet_listeners([device for device in devices if device in fleet])
    dropped: dict[str, str] = {}
    going = _phase(operator, list(devices), release.begin(job_id), shared, dropped, progress)
    begun = list(going)
    for chunk in release.chunks(job_id, chunk_bytes):
        if not going:  # no device took the begin, or every one has dropped out
            break
        going = _phase(operator, going, chunk, shared, dropped, progress)
    aborted = [device for device in begun if device not in going]
    if aborted:  # free them for the next job now rather than after their idle timeout
        operator.exchange(aborted, Command.MODEL_UPDATE, {"phase": "abort", "job_id": job_id}, set())
    operator.timeout = max(operator.timeout, COMMIT_SECONDS)
    commit = {"phase": "commit", "job_id": job_id}
    committed = operator.exchange(going, Command.MODEL_UPDATE, commit, shared & set(going))
    for device, reply in committed.items():
        if progress is not None:
            progress(device, commit, reply)
    return RollOut(committed, dropped)


def _phase(
    operator: Operator,
    devices: list[str],
    arguments: dict[str, Any],
    shared: set[str],
    dropped: dict[str, str],
    progress: Progress | None,
) -> list[str]:
    """Send one phase; the devices whose job goes on. A silent device is asked once more on its own (a
    chunk received twice is acknowledged twice); the others are dropped, with the reason in `dropped`."""
    replies = operator.exchange(devices, Command.MODEL_UPDATE, arguments, shared & set(devices))
    silent = [device for device, reply in replies.items() if reply is None]
    if silent:
        replies |= operator.exchange(silent, Command.MODEL_UPDATE, arguments, set())
    going = []
    for device, reply in replies.items():
        if progress is not None:
            progress(device, arguments, reply)
        if _data(reply).get("status") == "IN_PROGRESS":
            going.append(device)
        elif reply is None:
            dropped[device] = f"no reply to {arguments['phase']}"
        else:
            error = reply.get("error") if isinstance(reply.get("error"), dict) else None
            message = error.get("message") if error else json.dumps(reply.get("data"))
            dropped[device] = f"{arguments['phase']} refused: {message}"
    return going


def _data(reply: dict | None) -> dict[str, Any]:
    data = (reply or {}).get("data")
    return data if isinstance(data, dict) else {}
