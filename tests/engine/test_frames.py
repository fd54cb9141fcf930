"""Decoding: good images decode; empty, truncated, corrupt and huge ones are refused clearly."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from edge_inspector.errors import ImageDecodeError
from edge_inspector.frames import decode_image, encode_jpeg
from tests.conftest import jpeg


def _image() -> np.ndarray:
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (0, 0, 255)
    return image


def test_jpeg_and_png_decode_to_bgr() -> None:
    ok, png = cv2.imencode(".png", _image())
    assert ok
    for data in (jpeg(_image()), bytes(png.tobytes())):
        image = decode_image(data)
        assert image.shape == (48, 64, 3)
        assert image.dtype == np.uint8
        assert image[10, 5, 2] > 200  # red stays red: BGR order
        assert image[10, 50, 2] < 50


def test_empty_bytes() -> None:
    with pytest.raises(ImageDecodeError, match=r"cam1: empty image \(0 bytes\)"):
        decode_image(b"", origin="cam1")


def test_truncated_jpeg() -> None:
    data = jpeg(_image())
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_image(data[: len(data) // 2])


def test_truncated_png() -> None:
    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    assert ok
    data = bytes(png.tobytes())
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_garbage_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_image(b"<html>502 Bad Gateway</html>")


def test_garbage_bytes_after_ultralytics_patched_pillow() -> None:
    from edge_inspector.detect.runtime import prepare_ultralytics

    prepare_ultralytics()
    import ultralytics.utils.patches  # noqa: F401  (replaces PIL.Image.open)

    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_image(b"GIF89a but not really")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_huge_image_is_refused_before_it_is_decoded() -> None:
    # 100 000 x 100 000 pixels would need 30 GB decoded; the header alone must be enough to refuse.
    with pytest.raises(ImageDecodeError, match=r"larger than the 64 MP limit"):
        decode_image(_png_header_only(100_000, 100_000))
    # Below Pillow's own bomb limit, ours still holds, and names the size.
    with pytest.raises(
        ImageDecodeError, match=r"12000x8000 \(96 MP\), larger than the 64 MP limit"
    ):
        decode_image(_png_header_only(12_000, 8_000))


def test_encode_jpeg_round_trip() -> None:
    assert decode_image(encode_jpeg(_image(), 90)).shape == (48, 64, 3)
