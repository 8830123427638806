"""Fused embedders: several member models, each on its own alignment, as one cosine vector.

The fused vector is the concatenation of the members' unit vectors, each scaled by the square root of its
weight (weights sum to 1), so it has unit length and its cosine with another fused vector is exactly the
weighted sum of the members' cosines. Measured on LFW (docs/recognition-v2.md, scripts/bench_fusion.py):
dlib's ResNet is the better 1:1 model, MobileFace V2 the better 1:N model, and the fused vector beats both
on open-set identification while the gallery, the matcher and the tracker keep working on one vector.

A fused manifest entry names its members (`members`: id, sha256, weight) and points at a small definition
file holding exactly those members (see `definition_bytes`), so the entry's sha256 binds the member models
and the weights: a template made under other weights or other member models is another model's template.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from agent.errors import ModelError
from agent.vision.aligner import Aligner
from agent.vision.detector import KEYPOINT_NAMES
from agent.vision.embedder import Embedder, EmbedderInfo, FaceEmbedder, stated_gallery
from agent.vision.modelstore import ModelSpec, ModelStore
from agent.vision.runtime import InvokeClock, TfliteModel

WEIGHT_TOLERANCE = 1e-6

ModelLoader = Callable[[ModelSpec, InvokeClock], TfliteModel]


@dataclass(frozen=True)
class Member:
    id: str
    sha256: str
    weight: float


def is_fused(spec: ModelSpec) -> bool:
    return "members" in spec.raw


def definition_bytes(members: list[Member], flip: bool) -> bytes:
    """The definition file's exact content: what the fused entry's sha256 vouches for."""
    listed = [{"id": m.id, "sha256": m.sha256, "weight": m.weight} for m in members]
    return json.dumps({"flip": flip, "members": listed}, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def parse_members(spec: ModelSpec) -> list[Member]:
    """The entry's members, or a ModelError saying what is wrong with them."""
    raw = spec.raw.get("members")
    if not isinstance(raw, list) or len(raw) < 2:
        raise ModelError(f"fused embedder {spec.id!r}: members must list at least two embedders")
    members = []
    for item in raw:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("id", "sha256")):
            raise ModelError(f"fused embedder {spec.id!r}: each member needs an id and a sha256, got {item!r:.80}")
        weight = item.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            raise ModelError(f"fused embedder {spec.id!r}: member {item['id']!r} weight must be > 0, got {weight!r}")
        members.append(Member(item["id"], item["sha256"].lower(), float(weight)))
    if len({m.id for m in members}) != len(members):
        raise ModelError(f"fused embedder {spec.id!r}: a member is listed twice")
    total = sum(m.weight for m in members)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ModelError(f"fused embedder {spec.id!r}: member weights must sum to 1, they sum to {total:g}")
    if spec.raw.get("metric") != "cosine":
        raise ModelError(f"fused embedder {spec.id!r}: metric must be cosine, got {spec.raw.get('metric')!r}")
    return members


def member_specs(store: ModelStore, spec: ModelSpec) -> list[tuple[ModelSpec, float]]:
    """Each member's own manifest entry with its weight, after checking the entry against the manifest and
    its definition file."""
    members = parse_members(spec)
    flip = spec.raw.get("flip", False)
    if not isinstance(flip, bool):
        raise ModelError(f"fused embedder {spec.id!r}: flip must be true or false, got {flip!r}")
    if store.read_verified(spec) != definition_bytes(members, flip):
        raise ModelError(f"fused embedder {spec.id!r}: {spec.file} does not hold the members the manifest lists")
    return installed_members(store, spec, members)


def installed_members(store: ModelStore, spec: ModelSpec, members: list[Member]) -> list[tuple[ModelSpec, float]]:
    """Each member's own entry in `store` with its weight: a single embedder of the sha256 the fusion names, or
    a ModelError (a model update checks a fused release's members with this before its definition arrives)."""
    found = []
    for member in members:
        own = store.specs.get(member.id)
        if own is None:
            raise ModelError(f"fused embedder {spec.id!r}: member {member.id!r} is not in the manifest")
        if own.role != "embedder" or is_fused(own):
            raise ModelError(f"fused embedder {spec.id!r}: member {member.id!r} is not a single embedder model")
        if own.sha256 != member.sha256:
            raise ModelError(
                f"fused embedder {spec.id!r}: member {member.id!r} is sha256 {own.sha256}, the fusion was "
                f"fitted on {member.sha256}"
            )
        found.append((own, member.weight))
    return found


class FusedEmbedder:
    """Members embed the same face on their own alignments; their scaled unit vectors are concatenated.

    The first member's chip is the one quality-checked and kept; `embed(chip)` re-aligns the other members
    from it (its keypoints sit on the first member's template), so kept chips rebuild fused templates.
    """

    def __init__(
        self, spec: ModelSpec, members: list[tuple[Embedder, float]], flip: bool = False, kin: tuple[str, ...] = ()
    ) -> None:
        """`kin`: other fused models whose first member is this one's (`kin_models`): their templates begin with
        that member's part, so a gallery enrolled under one of them keeps recognising under this one."""
        if spec.raw.get("threshold") is None:
            raise ModelError(f"embedder {spec.id!r} has no measured threshold in the manifest; choose another")
        self.members = members
        self.flip = flip
        self.scales = [math.sqrt(weight) for _, weight in members]
        first = members[0][0]
        self.model = first.model
        self.aligner = first.aligner
        self.info = EmbedderInfo(
            model_id=spec.id,
            sha256=spec.sha256,
            dimensions=sum(m.info.dimensions for m, _ in members),
            metric="cosine",
            threshold=float(spec.raw["threshold"]),
            gallery=stated_gallery(spec.raw),
        )
        self._chip_keypoints = _template_keypoints(self.aligner, [m.aligner for m, _ in members[1:]], spec.id)
        self.old_models = (first.info.model_id, *kin)

    @property
    def first_member(self) -> EmbedderInfo:
        """The model whose chip is kept: a gallery enrolled with it alone keeps recognising under fusion."""
        return self.members[0][0].info

    def member_vector(self, fused: np.ndarray, model_id: str) -> np.ndarray:
        """A member's unit vector inside a fused one: how a fused query meets templates that member made
        alone (a gallery enrolled before fusion can keep recognising on its own model's threshold)."""
        start = 0
        for (member, _), scale in zip(self.members, self.scales, strict=True):
            end = start + member.info.dimensions
            if member.info.model_id == model_id:
                return np.asarray(fused[start:end], dtype=np.float32) / np.float32(scale)
            start = end
        raise ModelError(f"{model_id!r} is not a member of {self.info.model_id!r}")

    def _unit(self, member: Embedder, chip: Image.Image) -> np.ndarray:
        vector = _unit(member.embed(np.asarray(chip)))
        if self.flip:
            # Pillow mirrors a chip in a fifth of the time numpy takes to copy a reversed view of it.
            mirror = np.asarray(chip.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
            vector = _unit(vector + _unit(member.embed(mirror)))
        return vector

    def embed_face(self, image: Image.Image, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chips = [member.aligner.align_image(image, keypoints) for member, _ in self.members]
        return np.asarray(chips[0]), self._fuse(chips)

    def embed(self, chip: np.ndarray) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(chip, dtype=np.uint8))
        chips = [image, *(m.aligner.align_image(image, self._chip_keypoints) for m, _ in self.members[1:])]
        return self._fuse(chips)

    def _fuse(self, chips: list[Image.Image]) -> np.ndarray:
        pieces = zip(self.members, self.scales, chips, strict=True)
        parts = [scale * self._unit(member, chip) for (member, _), scale, chip in pieces]
        return np.concatenate(parts).astype(np.float32)


def _unit(vector: np.ndarray) -> np.ndarray:
    # np.linalg.norm's own formula (the root of the dot product) without its call overhead (0.9 against 2.3 us):
    # the float32 division rounds this float64 root to numpy's float32 one, so the unit vector is the same.
    norm = math.sqrt(float(np.dot(vector, vector)))
    if not math.isfinite(norm) or norm <= 0:
        raise ModelError("an embedder returned a zero or non-finite vector")
    return vector / norm


def _template_keypoints(first: Aligner, others: list[Aligner], model_id: str) -> np.ndarray:
    """Keypoints of a chip made by `first`: its template; every other member must align on those points."""
    keypoints = np.zeros((len(KEYPOINT_NAMES), 2))
    keypoints[list(first.keypoint_indices)] = first.template
    for other in others:
        missing = set(other.keypoint_indices) - set(first.keypoint_indices)
        if missing:
            names = ", ".join(KEYPOINT_NAMES[i] for i in sorted(missing))
            raise ModelError(f"fused embedder {model_id!r}: the first member's chip has no {names} to align on")
    return keypoints


def chip_model(store: ModelStore, spec: ModelSpec) -> ModelSpec:
    """The entry whose alignment makes the chip an embedder keeps: its own, or a fused entry's first member's
    (kept chips of that model rebuild the fused templates)."""
    if not is_fused(spec):
        return spec
    first = parse_members(spec)[0].id
    if first not in store.specs:
        raise ModelError(f"fused embedder {spec.id!r}: member {first!r} is not in the manifest")
    return store.specs[first]


def kin_models(store: ModelStore, spec: ModelSpec) -> list[str]:
    """The other fused entries of `store` whose first member is `spec`'s own (the same id and sha256), in manifest
    order: a template of theirs begins with that member's vector, so switching between them (the default and an
    option) leaves a gallery recognising on that part. An entry whose members cannot be read is no kin."""
    first = parse_members(spec)[0]
    kin = []
    for other in store.specs.values():
        if other.id == spec.id or other.role != "embedder" or not is_fused(other):
            continue
        try:
            head = parse_members(other)[0]
        except ModelError:
            continue
        if (head.id, head.sha256) == (first.id, first.sha256):
            kin.append(other.id)
    return kin


def parse_carried(spec: ModelSpec) -> list[tuple[str, str]]:
    """(id, sha256) of each build listed in the entry's `carries_templates_of`; a ModelError if it is malformed."""
    listed = spec.raw.get("carries_templates_of", [])
    if not isinstance(listed, list) or not all(
        isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("id", "sha256")) for item in listed
    ):
        raise ModelError(f"embedder {spec.id!r}: carries_templates_of must list objects with an id and a sha256")
    return [(item["id"], item["sha256"].lower()) for item in listed]


def carried_models(store: ModelStore, spec: ModelSpec) -> list[str]:
    """The embedders whose templates `spec` takes as its own (its entry's `carries_templates_of`: each an id and the
    sha256 of the build measured), those of `store` that are that build exactly, in the entry's order. An entry
    states one where its vectors are the same function up to quantization: the same members, weights and chips,
    with a member rebuilt (docs/recognition-v2.md, "Carrying templates over"), so a gallery needs no re-enrollment.
    A malformed list is a ModelError."""
    carried = []
    for model_id, sha256 in parse_carried(spec):
        other = store.specs.get(model_id)
        if other is not None and other.sha256 == sha256 and other.id != spec.id and other.role == "embedder":
            carried.append(other.id)
    return carried


def fallback_models(store: ModelStore, spec: ModelSpec) -> list[str]:
    """The models whose templates the gallery still matches under `spec` for people without templates of it: a
    fused embedder's first member, then its kin (`agent.gallery.matcher.Fallback`); none for a single model."""
    return [chip_model(store, spec).id, *kin_models(store, spec)] if is_fused(spec) else []


def open_embedder(store: ModelStore, spec: ModelSpec, load: ModelLoader) -> FaceEmbedder:
    """The embedder a manifest entry describes: one model, or its members fused; every model's invokes are
    counted on one clock."""
    clock = InvokeClock()
    if not is_fused(spec):
        return Embedder(load(spec, clock), spec.raw)
    members = [(Embedder(load(own, clock), own.raw), weight) for own, weight in member_specs(store, spec)]
    return FusedEmbedder(spec, members, bool(spec.raw.get("flip", False)), tuple(kin_models(store, spec)))
