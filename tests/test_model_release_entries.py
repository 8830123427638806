"""Release metadata, whatever a publisher signs: which manifest entry a release gets, which fused releases are
refused, and which signatures hold (agent/modelupdate/entries.py, agent/modelupdate/update.py).

The stores are the shipped manifest as a field device, a dlib device and a fused device have it
(tests/support/model_updates.py); nothing here needs a model to run.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands.schema import CommandError
from agent.commands.signing import key_id
from agent.modelupdate.entries import FITTED, FUSED_ONLY, SPACE, ReleaseRefused, check_fused, release_entry
from agent.modelupdate.update import MODEL_TAG, SIGNED_FIELDS, sign_model, verify_model
from agent.vision.modelstore import ModelStore
from tests.support.data import EMBEDDER_ID
from tests.support.model_updates import (
    FUSED_ID,
    MOBILEFACE_ID,
    field_models,
    from_manifest,
    fused_models,
    fusion_releases,
    shipped_models,
)

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
LAX = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelStore]:
    root = tmp_path_factory.mktemp("stores")
    return {
        "field": ModelStore(field_models(root / "field")),
        "dlib": ModelStore(shipped_models(root / "dlib", EMBEDDER_ID)),
        "fused": ModelStore(fused_models(root / "fused")),
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
metas = st.fixed_dictionaries(
    {
        "model_id": st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True),
        "role": st.sampled_from(["detector", "embedder"]),
        "file": st.from_regex(r"[a-z][a-z0-9_]{0,12}\.(tflite|json)", fullmatch=True),
        "version": st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){0,3}", fullmatch=True),
        "sha256": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
        "size": st.integers(1, 2**30),
        "entry": st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    }
)


# ------------------------------------------------------------------------------------ signatures


def message_before_standby(meta: dict[str, Any]) -> bytes:
    """What a publisher signed before the standby flag existed: the seven fields, canonical JSON."""
    body = {name: meta[name] for name in SIGNED_FIELDS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return MODEL_TAG + b"\n" + text.encode("utf-8")


@given(meta=metas)
@LAX
def test_a_release_signed_before_the_standby_flag_existed_still_verifies(meta: dict[str, Any]) -> None:
    signature = base64.b64encode(KEY.sign(message_before_standby(meta))).decode()
    assert verify_model(KEYS, meta, signature) == key_id(KEY.public_key())


@given(meta=metas)
@LAX
def test_the_standby_flag_cannot_be_added_or_dropped_after_signing(meta: dict[str, Any]) -> None:
    plain, standby = sign_model(KEY, meta), sign_model(KEY, meta | {"standby": True})
    assert plain != standby
    with pytest.raises(CommandError, match="does not verify"):
        verify_model(KEYS, meta | {"standby": True}, plain)
    with pytest.raises(CommandError, match="does not verify"):
        verify_model(KEYS, meta, standby)


# ------------------------------------------------------------------------------------ entries


stated_entries = st.dictionaries(
    st.sampled_from([*SPACE, *FITTED, *FUSED_ONLY, "input", "source", "licence"]),
    st.sampled_from(["cosine", "euclidean", 0.4, 0.6, {"threshold": 0.3}, {"shape": [1, 128], "dtype": "float32"}]),
    max_size=5,
)


@given(stated=stated_entries)
@LAX
def test_a_new_model_on_a_fused_device_is_described_by_the_first_member_never_the_fused_entry(
    stores: dict[str, ModelStore], stated: dict[str, Any]
) -> None:
    store = stores["fused"]
    meta = {"model_id": "new-model", "role": "embedder", "file": "new.tflite", "entry": stated}
    dlib = store.specs[EMBEDDER_ID].raw
    try:
        entry = release_entry(store, meta, store.specs[FUSED_ID])
    except ReleaseRefused as exc:
        assert "threshold" not in stated and "state its own" in str(exc)
        return
    moved = any(key in stated and stated[key] != dlib.get(key) for key in SPACE)
    for key in FITTED:  # the member's figures, unless the release moved to another space; the stated ones win
        assert entry.get(key) == stated.get(key, None if moved else dlib.get(key))
    for key in FUSED_ONLY:  # only what the release states itself
        assert entry.get(key) == stated.get(key)
    assert entry["alignment"] == stated.get("alignment", dlib["alignment"])


def test_a_new_model_on_a_single_model_device_is_described_by_that_model(stores: dict[str, ModelStore]) -> None:
    store = stores["dlib"]
    meta = {"model_id": "new-model", "role": "embedder", "file": "new.tflite", "entry": {}}
    assert release_entry(store, meta, store.specs[EMBEDDER_ID]) == store.specs[EMBEDDER_ID].raw


def test_a_fused_release_gets_exactly_the_entry_it_signs(stores: dict[str, ModelStore]) -> None:
    store, release = stores["fused"], fusion_releases()[1]
    meta = release.meta | {"role": "embedder"}
    assert release_entry(store, meta, store.specs[EMBEDDER_ID]) == release.meta["entry"]


def test_a_model_file_under_a_fused_entrys_id_is_refused(stores: dict[str, ModelStore]) -> None:
    store = stores["fused"]
    meta = {"model_id": FUSED_ID, "role": "embedder", "file": "x.tflite", "entry": {}}
    with pytest.raises(ReleaseRefused, match="ship its definition"):
        release_entry(store, meta, store.specs[FUSED_ID])


members = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(
                [EMBEDDER_ID, MOBILEFACE_ID, "mobileface-v2-int8", "mobileface-v2-float32", "blazeface-short"]
            ),
            "sha256": st.sampled_from([s.sha256 for s in ModelStore().specs.values()] + ["ab" * 32]),
            "weight": st.sampled_from([0.2, 0.5, 0.8, 1.0, 0.0, -0.2]),
        }
    ),
    max_size=3,
)


@given(listed=st.just(ModelStore().specs[FUSED_ID].raw["members"]) | members, flip=st.booleans())
@LAX
def test_a_fused_release_is_taken_only_as_the_definition_of_installed_members(
    stores: dict[str, ModelStore], listed: list[dict[str, Any]], flip: bool
) -> None:
    """The shipped definition's bytes, released under an entry that may list other members: taken only where
    the entry is the one the definition holds, on a device with its members (dlib's), never on a field device."""
    release = from_manifest(FUSED_ID, "3")
    meta = release.meta | {"role": "embedder", "sha256": ModelStore().specs[FUSED_ID].sha256}
    meta |= {"size": len(release.content), "entry": release.meta["entry"] | {"members": listed, "flip": flip}}
    same = listed == release.meta["entry"]["members"] and flip == release.meta["entry"]["flip"]
    if same:
        with pytest.raises(ReleaseRefused, match=f"member {MOBILEFACE_ID} is not installed"):
            check_fused(stores["field"], meta, meta["entry"])
        check_fused(stores["dlib"], meta, meta["entry"])
    else:
        with pytest.raises(ReleaseRefused):
            check_fused(stores["dlib"], meta, meta["entry"])


@given(listed=st.one_of(st.text(max_size=5), st.lists(st.one_of(st.integers(), st.text(max_size=5)), min_size=1)))
@LAX
def test_a_fused_release_with_a_malformed_carried_list_is_refused_before_anything_changes(
    stores: dict[str, ModelStore], listed: Any
) -> None:
    release = from_manifest(FUSED_ID, "3")
    meta = release.meta | {"role": "embedder", "sha256": ModelStore().specs[FUSED_ID].sha256}
    meta |= {"size": len(release.content), "entry": release.meta["entry"] | {"carries_templates_of": listed}}
    with pytest.raises(ReleaseRefused, match="carries_templates_of"):
        check_fused(stores["dlib"], meta, meta["entry"])
