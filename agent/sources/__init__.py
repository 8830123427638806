"""Where a frame enters: camera adapters behind one `FrameSource` interface.

- `picamera.PicameraSource`: a Raspberry Pi camera (picamera2, imported only when opened): detection on
  the lores stream, sharper crops from the main stream (`Frame.hires`).
- `pyav.PyavSource`: USB/V4L2 cameras, RTSP streams and video files through PyAV (FFmpeg).
- `folder.FolderSource`: a folder of images replayed in name order.
- `latest.LatestFrame`: the reader thread the live loop consumes: always the newest frame, drops counted,
  failed cameras reopened with backoff, state for status.
- `factory.open_source` / `open_latest`: the `[camera]` settings to one of the above.
"""

from agent.sources.base import Frame, FrameSource, HiRes, SourceError, SourceUnavailable
from agent.sources.factory import open_latest, open_source, parse_source
from agent.sources.latest import LatestFrame, SourceState, SourceStatus

__all__ = [
    "Frame",
    "FrameSource",
    "HiRes",
    "LatestFrame",
    "SourceError",
    "SourceState",
    "SourceStatus",
    "SourceUnavailable",
    "open_latest",
    "open_source",
    "parse_source",
]
