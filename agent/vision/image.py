"""Images in: files, bytes and arrays become RGB uint8 frames, or a clear `ImageError`."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from agent.errors import ImageError
from agent.files import FileRefused, read_regular_file

# What one decode may cost, so a hostile or mistaken upload cannot exhaust a Pi's memory (a 7000x7000 PNG of
# 190 KB took 0.75-1.27 GB when decoded at full size and converted). Pillow holds RGB/RGBA/I at 4 bytes a
# pixel, so no decode yields more than MAX_PIXELS, 4K UHD (33 MB, and a resize's intermediate of at most as
# much). A JPEG may have more pixels: libjpeg decodes it reduced (1/2, 1/4 or 1/8 in the DCT), up to
# MAX_JPEG_PIXELS. A progressive JPEG also buffers all its coefficients at full size (2-6 bytes a pixel), so
# it may have no more than MAX_PIXELS. See scripts/bench_hostile.py for what the agent's RSS does.
MAX_PIXELS = 3840 * 2160
MAX_JPEG_PIXELS = 80_000_000  # under Pillow's own decompression-bomb warning (89 MP)
MAX_SIDE = 4096  # longest side returned: no camera frame is larger, and every copy after the decode is bounded
MAX_FILE_BYTES = 64 * 1024 * 1024
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def load_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> np.ndarray:
    """Decode a JPEG/PNG/... file or bytes into an RGB uint8 array of at most `max_side` pixels a side, EXIF
    orientation applied. Shrunk before any mode conversion, so no full-size copy is ever made; a JPEG is
    decoded reduced to begin with."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    data = source if isinstance(source, bytes) else _read_file(Path(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if image.format in ("JPEG", "MPO"):
                    _draft(image, name, max_pixels, max_side)
                elif width * height > max_pixels:
                    raise ImageError(f"{name}: image is {width}x{height}, over the {max_pixels} pixel limit")
                orientation = image.getexif().get(0x0112)
                image.load()
                picture: Image.Image = image
                fitted = _fit(*picture.size, max_side)
                if picture.size != fitted:  # box-reduce first where Pillow can (not 1, P, I;16): faster, as sharp
                    plain = picture.mode in ("1", "P") or picture.mode.startswith("I;16")
                    full, picture = (
                        picture,
                        picture.resize(fitted, Image.Resampling.BICUBIC, reducing_gap=None if plain else 2.0),
                    )
                    full.close()  # its pixels go now, before the conversions below
                if orientation in _ORIENTATION:
                    picture = picture.transpose(_ORIENTATION[orientation])
                return np.asarray(_to_rgb(picture))
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: image is corrupt or truncated ({exc})") from exc


def _draft(image: Image.Image, name: str, max_pixels: int, max_side: int) -> None:
    """Have libjpeg decode `image` reduced: no smaller than `max_side` allows, no larger than `max_pixels`."""
    width, height = image.size
    progressive = bool(image.info.get("progressive") or image.info.get("progression"))
    limit = max_pixels if progressive else MAX_JPEG_PIXELS
    if width * height > limit:
        kind = "progressive JPEG" if progressive else "JPEG"
        raise ImageError(f"{name}: image is {width}x{height}, over the {limit} pixel limit for a {kind}")
    fitted_w, _ = _fit(width, height, max_side)
    scale = next((s for s in (8, 4, 2) if width // s >= fitted_w), 1)  # the most reduction that keeps max_side
    while scale < 8 and (width // scale) * (height // scale) > max_pixels:
        scale *= 2
    if (width // scale) * (height // scale) > max_pixels:
        raise ImageError(f"{name}: image is {width}x{height}: even at 1/8 over the {max_pixels} pixel limit")
    if scale > 1:
        image.draft(None, (width // scale, height // scale))


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) shrunk to at most `max_side` a side, aspect kept."""
    scale = max_side / max(width, height, 1)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _read_file(path: Path) -> bytes:
    try:
        return read_regular_file(path, MAX_FILE_BYTES)
    except FileRefused as exc:
        raise ImageError(f"{path}: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """Run on the shrunk image only: each conversion below is a copy."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become black, as a camera would never show "see-through" pixels.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit and float greyscale: scale the used range into 8 bits.
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def as_rgb_frame(frame: np.ndarray) -> np.ndarray:
    """Accept HxW grey, HxWx1, HxWx3 RGB or HxWx4 RGBA uint8 frames; return HxWx3 RGB."""
    if not isinstance(frame, np.ndarray):
        raise ImageError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ImageError(f"frame must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise ImageError(f"frame must be HxW, HxWx1, HxWx3 or HxWx4, got shape {frame.shape}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ImageError(f"frame is empty: shape {frame.shape}")
    if frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    if frame.shape[2] == 4:
        return frame[:, :, :3]
    return frame
