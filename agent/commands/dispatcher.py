"""Where a command lands: decode, validate, authorise, de-duplicate, run, audit, answer.

`CommandDispatcher.handle` never raises: whatever the payload, the caller gets a reply document
(`agent.wire.OkReply` or `ErrorReply`: `{"schema", "request_id", "status": "ok"|"error", "data" | "error":
{"code", "message"}}`) and the next command is handled as usual.

A repeated request id gets the first answer without running again (QoS 1 may deliver a command twice,
and an operator may retry after a timeout). The answers live in memory, at most
`commands.dedupe_entries` of them, `DEDUPE_BYTES` in all (256 list_people replies of a big gallery were
~600 MB) and for at most `DEDUPE_SECONDS`: the gallery's schema is not this
package's to migrate, and a restart ends the window in which a broker redelivers. Only answers of
commands that ran are kept; an `internal` failure is not, so a retry runs again (the gallery's writes
are transactions, so a failure left nothing half done). An erasure drops every kept answer that names
the erased person, so a repeated request id cannot bring their data back.

Authority comes after validation (a malformed request is refused as such, signed or not) and before
anything runs. The audit actor is what was verified, never what the sender claims: `key:<key id>` for a
signed command, `mqtt:unsigned` for an unsigned one (its `origin`, if any, kept as `claimed_origin`), and
`mqtt:unverified` for a request refused before or at its signature check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.commands.handlers import HANDLERS, CommandServices, Context, Done
from agent.commands.schema import (
    COMMAND_NAME,
    SMALL_PAYLOAD_BYTES,
    CommandError,
    ErrorCode,
    Request,
    command_schemas,
    decode_payload,
    loose_request_id,
)
from agent.commands.signing import CommandSecurity
from agent.errors import FaceagentError
from agent.gallery.store import GalleryStore
from agent.storage import is_disk_full
from agent.wire import Reply, error_document, ok_document

__all__ = ["CommandDispatcher", "CommandSecurity", "CommandServices", "ReplyCache", "error_reply"]

DEDUPE_SECONDS = 24 * 3600
DEDUPE_BYTES = 4 * 1024 * 1024  # a list_people of ~10,000 people; a larger answer is not kept (a repeat reruns)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Answer:
    fingerprint: str
    reply: bytes
    at: datetime


class ReplyCache:
    """The replies of recent requests by request id, bounded in count, bytes and age, oldest out first."""

    def __init__(self, max_entries: int, max_age: timedelta, max_bytes: int = DEDUPE_BYTES) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.bytes = 0
        self._answers: OrderedDict[str, _Answer] = OrderedDict()

    def get(self, request_id: str, now: datetime) -> _Answer | None:
        while self._answers and now - next(iter(self._answers.values())).at > self.max_age:
            self._drop_oldest()
        return self._answers.get(request_id)

    def put(self, request_id: str, answer: _Answer) -> None:
        """Keep `answer`, unless it alone is over the byte budget (a repeat then runs again)."""
        self.forget_request(request_id)
        if len(answer.reply) > self.max_bytes:
            log.info(
                "reply of %s (%d bytes) not kept for repeats: over %d", request_id, len(answer.reply), self.max_bytes
            )
            return
        self._answers[request_id] = answer
        self.bytes += len(answer.reply)
        while len(self._answers) > self.max_entries or self.bytes > self.max_bytes:
            self._drop_oldest()

    def forget_request(self, request_id: str) -> None:
        answer = self._answers.pop(request_id, None)
        if answer is not None:
            self.bytes -= len(answer.reply)

    def forget_mentions(self, values: tuple[str, ...]) -> int:
        """Drop every reply holding one of `values` as a whole JSON string (an erased person's id or name)."""
        needles = [json.dumps(value, ensure_ascii=True).encode() for value in values if value]
        stale = [rid for rid, answer in self._answers.items() if any(n in answer.reply for n in needles)]
        for request_id in stale:
            self.forget_request(request_id)
        return len(stale)

    def _drop_oldest(self) -> None:
        self.bytes -= len(self._answers.popitem(last=False)[1].reply)

    def __len__(self) -> int:
        return len(self._answers)


def _encode(reply: Reply) -> bytes:
    """ASCII only, so `ReplyCache.forget_mentions` finds an erased name as its escaped JSON string."""
    return json.dumps(reply, ensure_ascii=True, allow_nan=False, default=str).encode()


def error_reply(request_id: str | None, code: ErrorCode, message: str) -> bytes:
    return _encode(error_document(request_id, code, message))


def _ok(request_id: str, data: Mapping[str, Any]) -> bytes:
    return _encode(ok_document(request_id, data))


_FALLBACK = error_reply(None, ErrorCode.INTERNAL, "internal error; see the device log")


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _fingerprint(name: str, document: dict[str, Any]) -> str:
    """What a repeated request id must repeat: the command and its arguments. Hashed piece by piece: the
    whole text of an enrollment's photos at once would be three more copies of the payload."""
    digest = hashlib.sha256(f"{name}\n".encode())
    for piece in _CANONICAL.iterencode(document.get("args", {})):
        digest.update(piece.encode())
    return digest.hexdigest()


def _shown(name: str) -> str:
    return name if COMMAND_NAME.fullmatch(name) else json.dumps(name[:40])


class CommandDispatcher:
    """One entry point for every command; safe to call from any thread (commands run one at a time)."""

    def __init__(self, services: CommandServices, security: CommandSecurity) -> None:
        self.services = services
        self.security = security
        self.schemas = command_schemas(security.settings)
        self.replies = ReplyCache(security.settings.dedupe_entries, timedelta(seconds=DEDUPE_SECONDS))
        self._lock = threading.Lock()
        self._local = threading.local()  # one store per calling thread, as GalleryStore requires

    def handle(self, name: str, payload: bytes, *, now: datetime) -> bytes | None:
        """The reply to publish. Never raises; returns None only for a reply that must not be sent
        (none so far: even garbage is answered, so an operator sees why it was refused)."""
        started = time.monotonic()
        try:
            moment = now if now.tzinfo else now.replace(tzinfo=UTC)
            with self._lock:
                reply = self._handle(str(name), bytes(payload), moment)
        except Exception:
            log.exception("command %s: unexpected failure; answered as internal", _shown(str(name)))
            return _FALLBACK
        log.debug("command %s handled in %.1f ms", _shown(name), 1000 * (time.monotonic() - started))
        return reply

    def close(self) -> None:
        """Close the calling thread's store."""
        store = getattr(self._local, "store", None)
        if store is not None:
            store.close()
            self._local.store = None

    # ------------------------------------------------------------------------------------ steps

    def _handle(self, name: str, payload: bytes, now: datetime) -> bytes:
        actor, request_id, claimed = f"{self.services.actor_prefix}:unverified", None, None
        try:
            schema = self.schemas.get(name)
            document = decode_payload(payload, schema.max_bytes if schema else SMALL_PAYLOAD_BYTES)
            request_id = loose_request_id(document)
            if schema is None:
                known = ", ".join(self.schemas)
                raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {_shown(name)} (known: {known})")
            request = schema.check(document)
            claimed = request.origin
            signer = self.security.check(name, document, now, schema.access)
        except CommandError as exc:
            log.warning("command %s refused (%s): %s", _shown(name), exc.code, exc.message)
            details = {"request_id": request_id, "status": "error", "code": str(exc.code), "claimed_origin": claimed}
            self._audit(actor, name, details)
            return error_reply(request_id, exc.code, exc.message)
        actor = f"key:{signer}" if signer else f"{self.services.actor_prefix}:unsigned"
        return self._run(name, request, actor, signer, now)

    def _run(self, name: str, request: Request, actor: str, signer: str | None, now: datetime) -> bytes:
        details: dict[str, Any] = {"request_id": request.request_id, "signed_by": signer}
        details["claimed_origin"] = request.origin
        details["to"] = request.document.get("to")  # "*": one request for the whole fleet
        fingerprint = _fingerprint(name, request.document)
        request.document.clear()  # signature and fingerprint done: the photos' base64 text goes before they are decoded
        earlier = self.replies.get(request.request_id, now)
        if earlier is not None:
            if earlier.fingerprint == fingerprint:
                log.info("command %s %s: a repeat, answered as before", name, request.request_id)
                self._audit(actor, name, details | {"status": "repeat"})
                return earlier.reply
            message = "this request id was already used for a different request"
            self._audit(actor, name, details | {"status": "error", "code": "conflict"})
            return error_reply(request.request_id, ErrorCode.CONFLICT, message)
        done, reply, keep = self._execute(name, request, actor, now)
        if done is not None and done.erased:
            dropped = self.replies.forget_mentions(done.erased)
            log.info(
                "command %s %s: %d kept replies naming the erased person dropped", name, request.request_id, dropped
            )
        if keep:
            self.replies.put(request.request_id, _Answer(fingerprint, reply, now))
        status = json.loads(reply)
        code = status.get("error", {}).get("code")
        log.info("command %s %s from %s: %s", name, request.request_id, actor, code or "ok")
        extra = done.details if done is not None and done.details else {}
        self._audit(
            actor,
            name,
            details | {"status": status["status"], "code": code} | extra,
            done.target if done is not None else None,
        )
        if done is not None and done.after is not None:
            try:
                done.after()
            except Exception:
                log.exception("command %s %s: its follow-up action failed", name, request.request_id)
        return reply

    def _execute(self, name: str, request: Request, actor: str, now: datetime) -> tuple[Done | None, bytes, bool]:
        """(what the handler did, the reply, whether a repeat may be answered with it)."""
        rid = request.request_id
        try:
            context = Context(self.services, self._store, actor, now)
            done = HANDLERS[name](context, request.args)
            return done, _ok(rid, done.data), True
        except CommandError as exc:  # a full disk is not the request's fault: a retry runs again
            return None, error_reply(rid, exc.code, exc.message), exc.code is not ErrorCode.STORAGE_FULL
        except FaceagentError as exc:
            log.warning("command %s %s failed: %s", name, rid, exc)
            return None, error_reply(rid, ErrorCode.INTERNAL, str(exc)), False
        except Exception:
            log.exception("command %s %s failed", name, rid)
            return None, error_reply(rid, ErrorCode.INTERNAL, "internal error; see the device log"), False

    def _store(self) -> GalleryStore:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self.services.open_store()
        return store

    def _audit(self, actor: str, name: str, details: dict[str, Any], target: str | None = None) -> None:
        """Every command, run or refused, leaves a record; a failure to write one is logged, not fatal."""
        action = f"command.{name}" if COMMAND_NAME.fullmatch(name) else "command.invalid_name"
        scalars = {k: v for k, v in details.items() if v is not None and isinstance(v, str | int | float | bool)}
        try:
            self._store().audit(actor, action, target, scalars)
        except Exception as exc:
            if is_disk_full(exc):  # reported in status already; one line, no traceback per command
                log.warning("command %s: audit record not written: the state file system is full", _shown(name))
            else:
                log.exception("command %s: could not write the audit record", _shown(name))
