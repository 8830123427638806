"""Signed commands: who may command a device when the broker's own authentication is not enough.

The operator signs, with Ed25519, a canonical form of the request: a fixed tag, the device id and the
command name (so a request signed for one device or command cannot be replayed to another), then the
request as JSON with sorted keys, no whitespace and no `signature` field. A request meant for every device
(`"to": "*"`, published once on `<prefix>/*/cmd/<name>`: agent.wire.FLEET) is signed with "*" in place of
the device id: one signature the whole fleet checks, and no device id can stand for it, so a request signed
for one device still cannot pass as one for all, nor the reverse. What a fleet-wide signature allows is what
the operator asked of every device; a copy of it replayed to one device later is refused as replayed (that
device ran it) or as stale (outside the timestamp window), as any signed request. Signing covers the parsed
document, not the bytes on the wire, so any JSON encoder may send it; numbers must survive a round
trip through a float (Python's `json` does).

A signed request carries `sent_at`; the device refuses it outside `timestamp_window_seconds` of its
own clock (stale) and refuses the same `(request_id, sent_at)` twice (replayed). A retry of a command
signed afresh has a new `sent_at`, passes, and gets the first answer from the dispatcher's duplicate
check without running twice; a copy of the original bytes is refused. Requests are remembered for the
timestamp window, which is all it needs: older copies are stale anyway. The running agent keeps them in
the gallery's SQLite file (`StoredReplayCache`), so a restart does not let a captured copy pass again;
if that file cannot be written (a full disk), memory stands in until it can.

Who may run what (`Access` in agent/commands/schema.py): a command that changes state or reveals personal
data runs only when signed by a command key (`commands.public_keys`); the others run for anyone on the
broker. A device with no key serves only those and says, at start and in every refusal, how to add one.
`commands.allow_unsigned = true` lets every command run unsigned, as before signing was the default: a
visible choice (a warning at start, `commands.authority` in the status document). `commands.signing_required`
no longer changes anything (signing is the default) and may not be combined with `allow_unsigned`.

Keys have roles: command keys sign commands, release keys (`models.release_keys`) sign model releases
(agent/modelupdate/update.py), and neither verifies the other's signatures; one key in both lists is refused.
The audit names a signed command's key (`key:<key id>`); an unsigned one is `mqtt:unsigned`, and the origin
it claims is kept as `claimed_origin` in the details, never as the actor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.commands.schema import Access, CommandError, ErrorCode, command_schemas
from agent.config import CommandSettings, Settings
from agent.errors import ConfigError, FaceagentError
from agent.files import FileRefused, read_regular_file
from agent.gallery.store import GalleryStore
from agent.identity import utc_iso
from agent.wire import FLEET

TAG = b"faceagent-command-v1"
REPLAY_ENTRIES = 10_000
KEY_FILE_LIMIT = 64 * 1024  # a PEM Ed25519 key is about 120 bytes

log = logging.getLogger(__name__)

HOW_TO_ADD_A_KEY = (
    "make a key pair with `faceagent ctl keygen KEY_FILE` and add the public key it prints to [commands] "
    "public_keys in /etc/faceagent/faceagent.toml (or in the faceagent.toml put on the boot partition before "
    "first boot), then sign each command with `faceagent ctl ... --sign-key KEY_FILE`"
)


def canonical_request(device_id: str, name: str, request: dict[str, Any]) -> bytes:
    """The bytes that are signed and verified."""
    body = {key: value for key, value in request.items() if key != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return b"\n".join((TAG, device_id.encode(), name.encode(), text.encode("utf-8")))


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key (in audit records and messages)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The base64 form of the public half, as `commands.public_keys` takes it."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign_request(
    key: Ed25519PrivateKey, device_id: str, name: str, request: Mapping[str, Any], *, now: datetime
) -> dict[str, Any]:
    """`request` with a fresh `sent_at` and its signature for `name` on `device_id`."""
    unsigned = {k: v for k, v in request.items() if k != "signature"} | {"sent_at": utc_iso(now)}
    signature = key.sign(canonical_request(device_id, name, unsigned))
    return unsigned | {"signature": base64.b64encode(signature).decode()}


def request_signer(key: Ed25519PrivateKey) -> Callable[[str, str, Mapping[str, Any]], dict[str, Any]]:
    """An operator client's signer (`agent.link.operator.RequestSigner`): each request signed as it is sent."""

    def sign(device_id: str, name: str, request: Mapping[str, Any]) -> dict[str, Any]:
        return sign_request(key, device_id, name, request, now=datetime.now(UTC))

    return sign


def load_public_keys(entries: tuple[str, ...], setting: str = "commands.public_keys") -> dict[str, Ed25519PublicKey]:
    """Key id -> key for each entry: base64 of the 32 raw bytes, or the absolute path of a PEM file."""
    keys: dict[str, Ed25519PublicKey] = {}
    for index, entry in enumerate(entries):
        where = f"{setting}[{index}]"
        key = _raw_public_key(entry.strip()) or _public_key_file(Path(entry.strip()).expanduser(), where)
        keys[key_id(key)] = key
    return keys


@dataclass(frozen=True)
class KeyRoles:
    """The device's trusted keys by role: command keys sign commands, release keys sign model releases."""

    commands: dict[str, Ed25519PublicKey]
    releases: dict[str, Ed25519PublicKey]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRoles:
        """Both lists loaded; ConfigError for an unusable entry or a key given both roles."""
        commands = load_public_keys(settings.commands.public_keys, "commands.public_keys")
        releases = load_public_keys(settings.models.release_keys, "models.release_keys")
        shared = sorted(commands.keys() & releases.keys())
        if shared:
            raise ConfigError(
                f"models.release_keys: key {shared[0]} is also in commands.public_keys; a key has one role "
                "(make a release key with `faceagent ctl keygen --role release KEY_FILE`)"
            )
        return cls(commands, releases)


def _raw_public_key(text: str) -> Ed25519PublicKey | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return Ed25519PublicKey.from_public_bytes(raw) if len(raw) == 32 else None


def _public_key_file(path: Path, where: str) -> Ed25519PublicKey:
    if not path.is_absolute():
        raise ConfigError(f"{where}: neither base64 of a 32-byte Ed25519 key nor an absolute path of a PEM file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc
    key: object = _raw_public_key(data.decode("ascii", "replace").strip())
    if key is None:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise ConfigError(f"{where}: {path} is not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{where}: {path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted PEM (PKCS#8) Ed25519 private key, as `openssl genpkey -algorithm ed25519` or
    `faceagent ctl keygen` writes it."""
    try:
        key = serialization.load_pem_private_key(read_regular_file(Path(path), KEY_FILE_LIMIT), password=None)
    except FileRefused as exc:
        raise ConfigError(f"signing key {path}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


@dataclass
class ReplayCache:
    """Signed requests seen, each kept until it would be stale anyway; bounded, oldest out first."""

    max_entries: int = REPLAY_ENTRIES
    _seen: OrderedDict[str, datetime] = field(default_factory=OrderedDict, init=False, repr=False)

    def add(self, key: str, expires: datetime, now: datetime) -> bool:
        """False when `key` was seen before (a replay); otherwise remember it."""
        while self._seen and next(iter(self._seen.values())) <= now:
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        self._seen[key] = expires
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
            log.warning("replay cache full (%d signed commands within the window): oldest forgotten", self.max_entries)
        return True


class ReplayGuard(Protocol):
    def add(self, key: str, expires: datetime, now: datetime) -> bool:
        """False when `key` was seen before (a replay); otherwise remember it until `expires`."""
        ...


class StoredReplayCache:
    """The replay cache in the gallery file, opened on first use by the thread that checks commands.

    Falls back to memory while the file refuses writes, so a full disk never stops signed commands; a key
    remembered only in memory is forgotten by a restart, as before this cache existed."""

    def __init__(self, gallery_path: Path) -> None:
        self.gallery_path = Path(gallery_path)
        self.memory = ReplayCache()
        self._store: GalleryStore | None = None

    def add(self, key: str, expires: datetime, now: datetime) -> bool:
        if not self.memory.add(key, expires, now):
            return False
        try:
            if self._store is None:
                self._store = GalleryStore.open(self.gallery_path)
            return self._store.remember_signed_request(key, expires, now)
        except FaceagentError as exc:
            log.warning("signed-command replay cache kept in memory only: %s", exc)
            if self._store is not None:
                self._store.close()
                self._store = None
            return True

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class Authority(StrEnum):
    """What an unsigned request may do on this device (the status document's `commands.authority`)."""

    SIGNED = "signed"  # open commands unsigned, the rest signed by a command key
    NO_KEYS = "no_keys"  # no command key: open commands only
    UNSIGNED_ALLOWED = "unsigned_allowed"  # commands.allow_unsigned: everything, signed or not


class CommandSecurity:
    """Decides whether a request may run: its access, and a signature's key, freshness and uniqueness."""

    def __init__(
        self,
        settings: CommandSettings,
        device_id: str,
        keys: dict[str, Ed25519PublicKey],
        replays: ReplayGuard | None = None,
    ) -> None:
        if settings.signing_required and settings.allow_unsigned:
            raise ConfigError("commands.allow_unsigned: cannot be true while commands.signing_required is true")
        self.settings = settings
        self.device_id = device_id
        self.keys = keys
        self.replays: ReplayGuard = replays if replays is not None else ReplayCache()

    @classmethod
    def from_settings(
        cls, settings: CommandSettings, device_id: str, replays: ReplayGuard | None = None
    ) -> CommandSecurity:
        return cls(settings, device_id, load_public_keys(settings.public_keys), replays)

    @property
    def authority(self) -> Authority:
        if self.settings.allow_unsigned:
            return Authority.UNSIGNED_ALLOWED
        return Authority.SIGNED if self.keys else Authority.NO_KEYS

    def describe(self) -> dict[str, Any]:
        """The status document's view: how commands are authorised, and by which keys."""
        return {"authority": str(self.authority), "command_keys": sorted(self.keys)}

    def announce(self) -> None:
        """At start, once: a device anyone may command, or no one may, says so and how to change it."""
        if self.authority is Authority.UNSIGNED_ALLOWED:
            log.warning(
                "commands.allow_unsigned is true: anyone who can publish to this device's command topics may "
                "enroll, list and erase people, change settings and restart it; remove it once operators sign"
            )
        elif self.authority is Authority.NO_KEYS:
            schemas = command_schemas(self.settings)
            open_ = ", ".join(name for name, schema in schemas.items() if schema.access is Access.OPEN)
            log.warning(
                "no command key configured: only %s will run; to manage this device remotely, %s",
                open_,
                HOW_TO_ADD_A_KEY,
            )

    def check(self, name: str, request: dict[str, Any], now: datetime, access: Access = Access.SIGNED) -> str | None:
        """The id of the key that signed `request`, None for an unsigned one that may run; else
        CommandError (unauthorized, stale, replayed). A signature present is checked whatever the access."""
        signature = request.get("signature")
        if signature is None or not self.keys:
            if signature is not None:
                log.info("command %s carries a signature but no command key is configured: taken as unsigned", name)
            if access is Access.OPEN or self.settings.allow_unsigned:
                return None
            if self.keys:
                raise CommandError(ErrorCode.UNAUTHORIZED, f"{name} must be signed by a command key (ctl --sign-key)")
            message = f"{name} must be signed and this device has no command key: {HOW_TO_ADD_A_KEY}"
            raise CommandError(ErrorCode.UNAUTHORIZED, message)
        signer = self._verify(name, request, signature)
        sent_at = request.get("sent_at")
        if sent_at is None:
            raise CommandError(ErrorCode.UNAUTHORIZED, "a signed command needs sent_at")
        sent = datetime.fromisoformat(sent_at)
        window = timedelta(seconds=self.settings.timestamp_window_seconds)
        if abs(now - sent) > window:
            raise CommandError(
                ErrorCode.STALE,
                f"sent_at {sent_at} is {abs(now - sent).total_seconds():.0f} s from the device clock "
                f"({utc_iso(now)}); the window is {window.total_seconds():g} s: check both clocks",
            )
        if not self.replays.add(f"{signer}|{request.get('request_id')}|{sent_at}", sent + window, now):
            raise CommandError(ErrorCode.REPLAYED, "this signed request was already received")
        return signer

    def _verify(self, name: str, request: dict[str, Any], signature: Any) -> str:
        audience = FLEET if request.get("to") == FLEET else self.device_id
        try:
            raw = base64.b64decode(signature, validate=True)
            message = canonical_request(audience, name, request)
        except (binascii.Error, ValueError, TypeError, UnicodeEncodeError):
            raise CommandError(ErrorCode.UNAUTHORIZED, "the signature is not base64 of a canonical request") from None
        identity = verifying_key(self.keys, raw, message)
        if identity is None:
            raise CommandError(ErrorCode.UNAUTHORIZED, "the signature does not verify with any configured key")
        return identity


def verifying_key(keys: Mapping[str, Ed25519PublicKey], signature: bytes, message: bytes) -> str | None:
    """The name of the first configured key that `signature` verifies `message` with, or None."""
    for identity, key in keys.items():
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return identity
    return None
