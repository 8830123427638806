"""A folder of images replayed in name order: recorded frames as a camera, for tests, demos and benchmarks."""

from __future__ import annotations

import logging
from pathlib import Path

from agent.errors import ImageError
from agent.sources.base import Frame, Pacer, SourceError, utc_now
from agent.vision.image import load_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class FolderSource:
    """Images of `folder` sorted by file name, at `fps` (0: as fast as they decode), again from the start when `loop`.

    An unreadable image is skipped with a warning, not raised: raising would make LatestFrame reopen the
    folder and replay it from the first image, again and again. A folder that is gone is raised at once,
    rather than one warning for each of its images, and LatestFrame reopens it when it is back.
    """

    def __init__(self, folder: Path, *, fps: float = 0.0, loop: bool = False) -> None:
        self.folder, self.fps, self.loop = Path(folder), fps, loop
        self.skipped = 0
        self._paths: list[Path] = []
        self._position = 0
        self._index = 0
        self._pacer = Pacer(fps)

    @property
    def description(self) -> str:
        return f"folder:{self.folder}"

    def open(self) -> None:
        try:
            paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        except OSError as exc:
            raise SourceError(f"{self.description}: cannot list the folder: {exc.strerror or exc}") from exc
        if not paths:
            raise SourceError(f"{self.description}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
        self._paths, self._position, self._index = paths, 0, 0
        self._pacer.reset()

    def read(self) -> Frame | None:
        if not self._paths:
            raise SourceError(f"{self.description}: read before open")
        for _ in range(len(self._paths)):  # at most one pass of skips, so a folder of broken files still ends
            if self._position >= len(self._paths):
                if not self.loop:
                    return None
                self._position = 0
            path = self._paths[self._position]
            self._position += 1
            try:
                image = load_image(path)
            except ImageError as exc:
                if not self.folder.is_dir():  # the folder went away (an unmounted share or stick): not one bad file
                    raise SourceError(f"{self.description}: the folder is gone ({exc})") from exc
                self.skipped += 1
                log.warning("%s: skipping %s", self.description, exc)
                continue
            self._pacer.wait()
            index, self._index = self._index, self._index + 1
            return Frame(image, utc_now(), index)
        raise SourceError(f"{self.description}: none of the images could be read")

    def close(self) -> None:
        self._paths = []
