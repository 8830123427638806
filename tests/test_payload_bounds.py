"""Command payloads are bounded before `json` builds anything: tokens and nesting counted by a linear pre-scan."""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands.dispatcher import ReplyCache, _Answer
from agent.commands.schema import MAX_DEPTH, MAX_TOKENS, CommandError, command_schemas, decode_payload, prescan
from agent.commands.signing import CommandSecurity, public_key_text, sign_request
from agent.config import CommandSettings
from agent.vision.pipeline import FacePipeline
from tests.support.commands import NOW, image_arg, make_device
from tests.support.data import POWELL, powell

LIMIT = 16 * 1024 * 1024
SMALL_TOKENS, SMALL_DEPTH = 40, 4

scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=8)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=6),
    max_leaves=60,
)


def _size(value: Any, level: int = 1) -> tuple[int, int]:
    """(values, keys and containers json builds; deepest container level)."""
    if isinstance(value, dict):
        inner = [_size(item, level + 1) for item in value.values()]
        return 1 + len(value) + sum(n for n, _ in inner), max([level] + [d for _, d in inner])
    if isinstance(value, list):
        inner = [_size(item, level + 1) for item in value]
        return 1 + sum(n for n, _ in inner), max([level] + [d for _, d in inner])
    return 1, 0


def _accepted(text: str) -> bool:
    try:
        prescan(text, SMALL_TOKENS, SMALL_DEPTH)
    except CommandError:
        return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents, compact=st.booleans())
def test_whatever_the_scan_accepts_decodes_within_its_limits(document: Any, compact: bool) -> None:
    text = json.dumps(document, separators=(",", ":") if compact else None, ensure_ascii=False)
    if _accepted(text):
        values, depth = _size(json.loads(text))
        assert values <= SMALL_TOKENS and depth <= SMALL_DEPTH


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents)
def test_small_shallow_documents_pass_the_scan(document: Any) -> None:
    values, depth = _size(document)
    if 3 * values <= SMALL_TOKENS and depth <= SMALL_DEPTH:
        assert _accepted(json.dumps(document))


@settings(max_examples=300, deadline=None)
@given(junk=st.text(alphabet='[]{}",:\\ab1 ', max_size=200))
def test_any_text_is_scanned_without_error_but_a_refusal(junk: str) -> None:
    if _accepted(junk):
        try:
            values, depth = _size(json.loads(junk))
        except ValueError:
            return
        assert values <= SMALL_TOKENS and depth <= SMALL_DEPTH


def _b64(size: int, head: bytes = b"") -> str:
    return base64.b64encode(head + os.urandom(size)).decode()


def test_the_largest_valid_enroll_request_passes() -> None:
    limits = CommandSettings()
    images = [{"data": _b64(500_000, b"\xff\xd8\xff"), "label": f"photo {i}"} for i in range(limits.max_images)]
    consent = {"reference": "form 12", "given_by": "Ada", "purpose": "door"}
    args = {"name": "Ada", "external_ref": "e1", "consent": consent, "force": True, "images": images}
    request = {"request_id": "r1", "schema": 1, "origin": "ops", "sent_at": "2025-06-01T12:00:00Z", "args": args}
    request["signature"] = "A" * 88
    payload = json.dumps(request).encode()
    assert len(payload) <= limits.max_payload_bytes
    command_schemas(limits)["enroll"].check(decode_payload(payload, limits.max_payload_bytes))


def test_a_fifty_setting_set_config_and_a_model_chunk_pass() -> None:
    values = {f"gallery.k{'x' * i}": i for i in range(50)}
    decode_payload(json.dumps({"request_id": "r1", "args": {"values": values}}).encode(), LIMIT)
    chunk = {"phase": "chunk", "job_id": "j1", "index": 0, "data": _b64(1024 * 1024)}
    decode_payload(json.dumps({"request_id": "r2", "args": chunk}).encode(), LIMIT)


def _refusal(payload: bytes) -> CommandError:
    with pytest.raises(CommandError) as caught:
        decode_payload(payload, LIMIT)
    assert caught.value.code == "bad_request"
    return caught.value


@pytest.mark.parametrize("item", [b"{},", b"[],", b"1,", b'"",'])
def test_a_payload_of_millions_of_small_values_is_refused_for_its_tokens(item: bytes) -> None:
    body = item * ((LIMIT - 100) // len(item))
    error = _refusal(b'{"request_id": "r1", "args": {"images": [' + body + b"1]}}")
    assert f"more than {MAX_TOKENS} JSON tokens" in error.message


def test_nesting_at_the_size_limit_is_refused_for_its_depth() -> None:
    half = (LIMIT - 100) // 2
    error = _refusal(b'{"request_id": "r1", "args": ' + b"[" * half + b"]" * half + b"}")
    assert f"deeper than {MAX_DEPTH} levels" in error.message


def test_an_unterminated_string_of_escapes_is_refused() -> None:
    error = _refusal(b'{"request_id": "' + b'\\"' * ((LIMIT - 100) // 2))
    assert "unterminated string" in error.message


# ------------------------------------------------------------------------------------ the reply cache


def _answer(size: int, at: datetime = NOW) -> _Answer:
    return _Answer("f", b"x" * size, at)


def test_the_reply_cache_is_bounded_in_bytes() -> None:
    cache = ReplyCache(256, timedelta(days=1), max_bytes=10_000)
    for i in range(256):
        cache.put(f"r{i}", _answer(3_000))
    assert cache.bytes <= 10_000 and len(cache) == 3
    assert cache.get("r255", NOW) is not None and cache.get("r0", NOW) is None


def test_a_reply_over_the_whole_budget_is_not_kept() -> None:
    cache = ReplyCache(256, timedelta(days=1), max_bytes=10_000)
    cache.put("small", _answer(100))
    cache.put("huge", _answer(10_001))
    assert cache.get("huge", NOW) is None and cache.get("small", NOW) is not None and cache.bytes == 100


@pytest.fixture(scope="module")
def operator_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _signed(key: Ed25519PrivateKey, command: str, request_id: str, *, at: datetime = NOW, **args: Any) -> bytes:
    request = {"request_id": request_id, "origin": "ops", "args": args}
    return json.dumps(sign_request(key, "dev1", command, request, now=at)).encode()


def test_a_repeated_list_people_after_erasure_does_not_return_the_erased_person(
    tmp_path: Path, pipeline: FacePipeline, shared_data: Path, operator_key: Ed25519PrivateKey
) -> None:
    commands = CommandSettings(public_keys=(public_key_text(operator_key),))
    device = make_device(
        tmp_path, pipeline, commands=commands, security=CommandSecurity.from_settings(commands, "dev1")
    )
    consent = {"reference": "consent-form-4711", "given_by": "Colin Powell"}
    images = [image_arg(powell(shared_data, POWELL[0]))]
    enrolled = device.send(
        "enroll", _signed(operator_key, "enroll", "e1", name="Colin Powell", images=images, consent=consent)
    )
    assert enrolled["status"] == "ok", enrolled
    listing = _signed(operator_key, "list_people", "list-1")
    assert "consent-form-4711" in json.dumps(device.send("list_people", listing))
    erased = device.send(
        "delete_person", _signed(operator_key, "delete_person", "d1", person_id=enrolled["data"]["person"]["id"])
    )
    assert erased["status"] == "ok", erased
    # The operator retries the same request id, signed afresh: the dispatcher answers repeats from its cache.
    later = NOW + timedelta(seconds=5)
    retry = _signed(operator_key, "list_people", "list-1", at=later)
    answer = device.send("list_people", retry, now=later)
    assert answer["status"] == "ok", answer
    again = json.dumps(answer)
    assert (
        "Colin Powell" not in again
        and "consent-form-4711" not in again
        and enrolled["data"]["person"]["id"] not in again
    )
