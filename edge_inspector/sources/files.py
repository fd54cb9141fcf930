"""Image files: a folder or a list, read in order (batch inspection and replay)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

from ..errors import ImageDecodeError, SourceError, SourceExhaustedError
from ..frames import Frame, decode_image
from .base import FrameSource

__all__ = ["IMAGE_SUFFIXES", "ImageFilesSource", "list_folder"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def list_folder(folder: Path, pattern: str = "*", *, recursive: bool = False) -> list[Path]:
    """The image files in a folder, in name order."""
    if not folder.is_dir():
        raise SourceError(f"{folder}: not a folder")
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read(path: Path, seq: int) -> Frame:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return Frame(decode_image(data, origin=str(path)), seq, str(path))


class ImageFilesSource(FrameSource):
    """Every file once, in order (or round and round with `loop`). Never drops a frame."""

    live = False

    def __init__(
        self,
        paths: Sequence[Path] | None = None,
        *,
        folder: Path | None = None,
        pattern: str = "*",
        recursive: bool = False,
        loop: bool = False,
        executor: Executor | None = None,
    ) -> None:
        self._paths = list(paths or ())
        self._folder, self._pattern, self._recursive = folder, pattern, recursive
        self._loop = loop
        self._executor = executor
        self._order: itertools.cycle[Path] | None = None
        self._iter: list[Path] = []
        self._index = 0
        self._seq = 0

    async def start(self) -> None:
        if self._folder is not None:
            self._paths = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                lambda: list_folder(
                    self._folder or Path(), self._pattern, recursive=self._recursive
                ),
            )
            if not self._paths:
                raise SourceError(f"{self._folder}: no images matching {self._pattern!r}")

    async def read(self, *, not_before: float | None = None) -> Frame:
        if not self._paths or (self._index >= len(self._paths) and not self._loop):
            raise SourceExhaustedError(f"{self.describe()}: all {len(self._paths)} images read")
        path = self._paths[self._index % len(self._paths)]
        self._index += 1
        self._seq += 1
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _read, path, self._seq
        )

    @property
    def remaining(self) -> int | None:
        """Images not read yet (None when looping)."""
        return None if self._loop else max(0, len(self._paths) - self._index)

    def describe(self) -> str:
        return f"folder {self._folder}" if self._folder else f"{len(self._paths)} image files"
