"""Hostile payloads for `bench_hostile.py` and the tests: built cheaply, whatever they cost to decode.

Not part of the agent: these scripts run from a source checkout, in the project's venv.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

_PNG_COLOUR = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}  # colour type, channels


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def flat_png(width: int, height: int, mode: str = "RGBA", bit_depth: int = 8) -> bytes:
    """A valid PNG of one flat colour, compressed row by row: a few hundred KB for 7000x7000 RGBA, never
    held whole in memory here (Pillow would need 196 MB to make it)."""
    colour, channels = _PNG_COLOUR[mode]
    row = b"\x00" + bytes(width * channels * bit_depth // 8)  # filter byte 0, then zeros
    packer = zlib.compressobj(9)
    compressed = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", compressed) + _chunk(b"IEND", b"")


def flat_jpeg(width: int, height: int, *, progressive: bool = False, mode: str = "L") -> bytes:
    """A JPEG of one flat colour (made with width*height bytes here for "L")."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128 if mode == "L" else (128, 128, 128)).save(
        buffer, format="JPEG", quality=50, progressive=progressive, subsampling=0 if mode != "L" else -1
    )
    return buffer.getvalue()


def nested_json(size: int) -> bytes:
    """A request whose args nest `[` as deep as `size` bytes allow."""
    half = (size - 64) // 2
    return b'{"request_id":"nested","args":' + b"[" * half + b"]" * half + b"}"


def token_json(size: int, item: bytes = b"{},") -> bytes:
    """A request of millions of tiny values, only 2 levels deep."""
    body = item * ((size - 64) // len(item))
    return b'{"request_id":"tokens","args":{"images":[' + body + b"1]}}"
