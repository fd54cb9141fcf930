"""Frames and the image decoding every source shares, with the checks bad input needs."""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from .errors import ImageDecodeError

__all__ = ["MAX_PIXELS", "Frame", "decode_image", "encode_jpeg"]

type Image = npt.NDArray[np.uint8]

# 64 MP covers any industrial camera; past that a "photo" is far more likely a decompression bomb.
MAX_PIXELS = 64_000_000
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


@dataclass(frozen=True, slots=True)
class Frame:
    """One picture from a camera, with when it was taken and what it belongs to."""

    image: Image
    seq: int
    origin: str
    captured_at: float = field(default_factory=time.monotonic)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    part_id: str | None = None
    lot_id: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.shape[1], self.image.shape[0]


def decode_image(data: bytes, *, origin: str = "image", max_pixels: int = MAX_PIXELS) -> Image:
    """Decode JPEG/PNG/BMP/... bytes to a BGR array, refusing empty, truncated or huge images."""
    if not data:
        raise ImageDecodeError(f"{origin}: empty image (0 bytes)")
    if is_jpeg(data) and not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        raise ImageDecodeError(f"{origin}: truncated JPEG (no end-of-image marker)")
    limit = f"the {max_pixels / 1e6:.0f} MP limit"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as probe:  # reads the header only
                width, height = probe.size
                kind = probe.format
    except PILImage.DecompressionBombError as exc:
        raise ImageDecodeError(f"{origin}: image is larger than {limit} ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, ImportError) as exc:
        # ImportError: once imported, Ultralytics patches Image.open to try an optional HEIF
        # plugin on anything Pillow cannot identify.
        if isinstance(exc, ImportError):
            exc = UnidentifiedImageError("unknown image format")
        raise ImageDecodeError(f"{origin}: not a readable image ({exc})") from None
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{origin}: image is {width}x{height} ({width * height / 1e6:.0f} MP), "
            f"larger than {limit}"
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageDecodeError(f"{origin}: corrupt {kind or 'image'} data")
    return np.asarray(image, np.uint8)


def encode_jpeg(image: Image, quality: int = 85) -> bytes:
    """Encode a BGR array as JPEG."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageDecodeError("could not encode the image as JPEG")
    return bytes(buf.tobytes())


def is_jpeg(data: bytes) -> bool:
    """Whether bytes start like a JPEG."""
    return data.startswith(_JPEG_SOI)
