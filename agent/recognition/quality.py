"""Face quality figures: how well a detected face will embed, and why it might not.

Shared by the live loop (which view of a track is worth embedding) and the enrollment gate (which
photo is good enough to become a template), so `assess` is pure and cheap: a handful of arithmetic
on the six keypoints, plus one Laplacian over the chip when a chip is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from agent.config import QualitySettings
from agent.vision.detector import KEYPOINT_NAMES, Face

_RIGHT_EYE = KEYPOINT_NAMES.index("right_eye")
_LEFT_EYE = KEYPOINT_NAMES.index("left_eye")
_NOSE = KEYPOINT_NAMES.index("nose_tip")
_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma


@dataclass(frozen=True)
class QualityReport:
    """The figures for one face and, against `QualitySettings`, the reasons it falls short (empty: usable)."""

    face_px: float  # box width in frame pixels
    score: float  # detector confidence
    yaw: float  # nose offset from the eye midpoint along the eye line / eye distance; 0 = frontal, signed
    roll_degrees: float  # eye-line angle; 0 = level
    sharpness: float | None  # variance of the Laplacian over the chip's centre; None without a chip
    view_score: float  # higher embeds better; see `view_score`
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, float]:
        """The finite figures, as stored with a template (`GalleryStore.add_template(quality=...)`)."""
        figures = {"face_px": self.face_px, "score": self.score, "yaw": self.yaw, "roll_degrees": self.roll_degrees}
        if self.sharpness is not None:
            figures["sharpness"] = self.sharpness
        return {key: round(value, 4) for key, value in figures.items() if math.isfinite(value)}


def assess(face: Face, chip: np.ndarray | None, settings: QualitySettings) -> QualityReport:
    """Measure `face` (and its aligned `chip`, if any) and list what fails `settings`."""
    yaw, roll = pose(face.keypoints)
    sharp = sharpness(chip) if chip is not None else None
    reasons = []
    if face.width < settings.min_face_px:
        reasons.append(f"face too small: {face.width:.0f} px wide, minimum {settings.min_face_px:.0f}")
    if face.score < settings.min_score:
        reasons.append(f"detector score too low: {face.score:.2f}, minimum {settings.min_score:.2f}")
    if sharp is not None and sharp < settings.min_sharpness:
        reasons.append(f"too blurry: sharpness {sharp:.1f}, minimum {settings.min_sharpness:.1f}")
    if not abs(yaw) <= settings.max_yaw:  # also catches NaN/inf from degenerate keypoints
        reasons.append(f"face turned sideways: yaw {abs(yaw):.2f}, maximum {settings.max_yaw:.2f}")
    if not abs(roll) <= settings.max_roll_degrees:
        reasons.append(f"head tilted: roll {abs(roll):.0f} degrees, maximum {settings.max_roll_degrees:.0f}")
    score = _view_score(face.width, face.score, yaw, settings)
    return QualityReport(face.width, face.score, yaw, roll, sharp, score, reasons)


def view_score(face: Face, settings: QualitySettings) -> float:
    """`assess(face, None, settings).view_score` without building the report: for the per-frame path."""
    return _view_score(face.width, face.score, pose(face.keypoints)[0], settings)


def _view_score(face_px: float, score: float, yaw: float, settings: QualitySettings) -> float:
    """One number to compare views of the same person (higher embeds better).

    Detector score x size (saturating at twice the minimum: the chip is resampled to a fixed size
    anyway) x frontality (1 when frontal, 1/2 at the yaw limit). Roll is left out (alignment undoes
    it) and so is sharpness: it needs the aligned chip, which the live loop only makes for the views
    it has already chosen to embed. A low detector score usually comes with blur, so it stands in.
    """
    size = min(face_px, 2.0 * settings.min_face_px) / settings.min_face_px
    frontal = 1.0 / (1.0 + (yaw / settings.max_yaw) ** 2) if math.isfinite(yaw) else 0.0
    return max(score, 0.0) * size * frontal


def pose(keypoints: np.ndarray) -> tuple[float, float]:
    """(yaw proxy, roll in degrees) from the eye and nose keypoints.

    The nose offset is measured along the eye line rather than the image x axis, so a tilted but
    frontal face does not read as turned. Coincident eyes (a degenerate detection) give yaw = inf.
    """
    rx, ry = keypoints[_RIGHT_EYE]
    lx, ly = keypoints[_LEFT_EYE]
    nx, ny = keypoints[_NOSE]
    ex, ey = float(lx - rx), float(ly - ry)  # the subject's right eye is on the image's left
    eye_sq = ex * ex + ey * ey
    roll = math.degrees(math.atan2(ey, ex))
    if eye_sq <= 1e-12:
        return math.inf, roll
    offset = (float(nx) - (rx + lx) / 2) * ex + (float(ny) - (ry + ly) / 2) * ey
    return offset / eye_sq, roll


def sharpness(chip: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey chip's central half.

    Only the centre (eyes, nose, mouth) counts: the chip's corners hold background, or black fill
    where the face touched the frame edge, and their hard edges would make a blurred face look sharp.
    """
    height, width = chip.shape[:2]
    centre = chip[height // 4 : height - height // 4, width // 4 : width - width // 4]
    grey = centre.astype(np.float32) @ _GREY if centre.ndim == 3 else centre.astype(np.float32)
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    return float(laplacian.var()) if laplacian.size else 0.0
