"""The manifest entry a release gets, and the releases refused before any byte of them is accepted.

Three kinds of release (see agent/modelupdate/update.py for the transfer):
- a model file (.tflite): a new version of a model (same id) or a new model (new id);
- a standby release (signed `standby: true`): installed beside the models in use without becoming the role's
  default, so a fused embedder's member can arrive before the fused entry that uses it;
- a fused release: its file is the fused definition (.json, `agent.vision.fusion.definition_bytes`), its entry
  names the members, their weights, flip and the figures fitted on them; it is refused unless every member is
  installed with the sha256 the fusion names.

Which entry a release starts from (its signed `entry` then overrides fields of it):
- a model already in the manifest: its own entry;
- a new single model: the entry of the model that describes the file shipped: the model in use for the role, or,
  when that is a fused embedder, its first member (the fused entry's members, flip and fused figures describe
  no .tflite file);
- a fused release: nothing. Its figures were fitted on exactly its members and weights, so the entry signed is
  the whole entry.
Fitted figures (`threshold`, `gallery`, `fitted`) are only carried over where the release keeps the space they
were fitted in: a release whose entry changes `metric`, `output` or `alignment` must state its own threshold,
or it is refused at begin rather than run on another model's figures.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from agent.errors import FaceagentError, ModelError
from agent.vision.fusion import (
    Member,
    chip_model,
    definition_bytes,
    installed_members,
    is_fused,
    parse_carried,
    parse_members,
)
from agent.vision.modelstore import ModelSpec, ModelStore

DEFINITION_SUFFIX = ".json"  # a fused release's file; every other model file is .tflite
FUSED_ONLY = ("members", "flip")  # a fused entry's own keys: never inherited by a single model
FITTED = ("threshold", "gallery", "fitted")  # figures fitted in one embedding space
SPACE = ("metric", "output", "alignment")  # what decides that space


class ReleaseRefused(FaceagentError):
    """A release this device must not install as it stands; the message says why and what to ship instead."""


def is_definition(file: str) -> bool:
    return file.endswith(DEFINITION_SUFFIX)


def release_entry(store: ModelStore, meta: dict[str, Any], current: ModelSpec) -> dict[str, Any]:
    """The manifest entry of the release `meta` (signed fields) on a device whose manifest is `store` and whose
    model in use for the role is `current`, before the fields the update sets itself; ReleaseRefused if
    there is none that would be right."""
    model_id, file, stated = meta["model_id"], meta["file"], meta.get("entry") or {}
    existing = store.specs.get(model_id)
    if is_definition(file):
        if existing is not None and not is_fused(existing):
            raise ReleaseRefused(f"{model_id} is a single model here: a fused release needs an id of its own")
        return copy.deepcopy(stated)
    if existing is not None:
        if is_fused(existing):
            raise ReleaseRefused(f"{model_id} is a fused embedder: ship its definition (.json), not a model file")
        base = existing
    else:
        base = chip_model(store, current) if is_fused(current) else current
    inherited = {key: value for key, value in copy.deepcopy(base.raw).items() if key not in FUSED_ONLY}
    moved = [key for key in SPACE if key in stated and stated[key] != base.raw.get(key)]
    if moved:
        inherited = {key: value for key, value in inherited.items() if key not in FITTED}
    entry = inherited | copy.deepcopy(stated)
    if meta["role"] == "embedder" and "threshold" not in entry and moved:
        raise ReleaseRefused(
            f"{model_id} changes {', '.join(moved)} from {base.id}, whose fitted figures (threshold, gallery) "
            "therefore do not apply to it: state its own in the release's entry"
        )
    if meta["role"] == "embedder" and "threshold" not in entry:
        raise ReleaseRefused(f"{model_id} would have no threshold: state one in the release's entry")
    return entry


def check_definition(meta: dict[str, Any], entry: dict[str, Any]) -> list[Member]:
    """A fused release's members, once its file is known to be the definition of exactly the members and flip
    its entry states and the entry states a threshold: ReleaseRefused otherwise (the publisher checks this too)."""
    model_id = meta["model_id"]
    if meta["role"] != "embedder":
        raise ReleaseRefused(f"fused release {model_id}: only an embedder can be fused, not a {meta['role']}")
    spec = ModelSpec(model_id, meta["role"], meta["file"], meta["sha256"], meta["size"], entry)
    try:
        members = parse_members(spec)
    except ModelError as exc:
        raise ReleaseRefused(f"{exc}: the release's entry must list them") from None
    flip = entry.get("flip", False)
    if not isinstance(flip, bool):
        raise ReleaseRefused(f"fused release {model_id}: flip must be true or false, got {flip!r:.40}")
    definition = definition_bytes(members, flip)
    if hashlib.sha256(definition).hexdigest() != meta["sha256"] or len(definition) != meta["size"]:
        raise ReleaseRefused(
            f"fused release {model_id}: its file is not the definition of the members and flip its entry states "
            "(faceagent ctl model-release --entry-from writes the entry from the manifest beside the definition)"
        )
    if "threshold" not in entry:
        raise ReleaseRefused(f"fused release {model_id}: its entry must state the threshold fitted on its members")
    try:
        parse_carried(spec)
    except ModelError as exc:
        raise ReleaseRefused(str(exc)) from None
    return members


def check_fused(store: ModelStore, meta: dict[str, Any], entry: dict[str, Any]) -> None:
    """A fused release (`check_definition`) whose members are all installed here, as single embedders of the
    sha256 it was fitted on: ReleaseRefused otherwise, before anything on the device changes."""
    model_id = meta["model_id"]
    members = check_definition(meta, entry)
    missing = [member.id for member in members if member.id not in store.specs]
    if missing:
        raise ReleaseRefused(
            f"fused release {model_id}: member {missing[0]} is not installed on this device: "
            "ship it first as a standby release (ctl model-update --standby)"
        )
    try:
        installed_members(store, ModelSpec(model_id, "embedder", meta["file"], meta["sha256"], 0, entry), members)
    except ModelError as exc:
        raise ReleaseRefused(str(exc)) from None


def check_member_kept(meta: dict[str, Any], current: ModelSpec) -> None:
    """A new build of a model the fused embedder in use is made of would void the figures fitted on it (and the
    fused entry names its sha256): ReleaseRefused, saying how to ship it instead."""
    if not is_fused(current):
        return
    for member in parse_members(current):
        if member.id == meta["model_id"] and member.sha256 != meta["sha256"]:
            raise ReleaseRefused(
                f"{member.id} is a member of {current.id}, the embedder in use, whose figures were fitted on its "
                f"sha256 {member.sha256[:12]}: ship the new build under a new id with --standby, then a fused "
                "release naming it"
            )
