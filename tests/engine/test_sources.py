"""Every source type against real local servers and files."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

from edge_inspector.errors import ImageDecodeError, SourceError, SourceExhaustedError
from edge_inspector.sources import (
    ImageFilesSource,
    MjpegSource,
    PushSource,
    SnapshotSource,
    VideoSource,
)
from edge_inspector.sources.http import MultipartParser, multipart_boundary, redact_url
from tests.camera_server import camera, frame_number, numbered_frame
from tests.conftest import jpeg
from tests.waiting import until

# -- files ------------------------------------------------------------------------------------


async def test_folder_reads_every_image_in_name_order_and_skips_a_corrupt_one(
    tmp_path: Path,
) -> None:
    for i in (3, 1, 2):
        (tmp_path / f"img{i}.jpg").write_bytes(jpeg(numbered_frame(i)))
    (tmp_path / "img1b.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    source = ImageFilesSource(folder=tmp_path)
    await source.start()
    assert frame_number((await source.read()).image) == 1
    with pytest.raises(ImageDecodeError, match=r"img1b\.jpg"):
        await source.read()
    assert frame_number((await source.read()).image) == 2
    frame = await source.read()
    assert frame_number(frame.image) == 3
    assert frame.origin.endswith("img3.jpg")
    with pytest.raises(SourceExhaustedError):
        await source.read()


async def test_empty_folder_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images"):
        await ImageFilesSource(folder=tmp_path).start()


async def test_missing_file_in_a_list_is_a_bad_frame(tmp_path: Path) -> None:
    good = tmp_path / "a.png"
    good.write_bytes(jpeg(numbered_frame(5)))
    source = ImageFilesSource([tmp_path / "missing.jpg", good], loop=True)
    await source.start()
    with pytest.raises(ImageDecodeError, match=r"missing\.jpg: cannot read"):
        await source.read()
    assert frame_number((await source.read()).image) == 5
    with pytest.raises(ImageDecodeError):  # looping: round again
        await source.read()


# -- HTTP snapshot --------------------------------------------------------------------------------


async def test_snapshot_fetches_a_fresh_frame_per_read() -> None:
    async with camera() as cam, aiohttp.ClientSession() as session:
        source = SnapshotSource(f"{cam.url}/snapshot.jpg", session)
        first, second = await source.read(), await source.read()
        assert (frame_number(first.image), frame_number(second.image)) == (1, 2)


async def test_snapshot_http_error_and_garbage_and_unreachable() -> None:
    async with camera() as cam, aiohttp.ClientSession() as session:
        source = SnapshotSource(f"{cam.url}/snapshot.jpg", session, timeout=2)
        cam.down = True
        with pytest.raises(SourceError, match="HTTP 503"):
            await source.read()
        cam.down = False
        cam.snapshot_body = b"\xff\xd8garbage"
        with pytest.raises(ImageDecodeError, match="truncated JPEG"):
            await source.read()
        port = cam.port
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match="Cannot connect"):
            await SnapshotSource(f"http://127.0.0.1:{port}/snapshot.jpg", session, timeout=2).read()


def test_credentials_never_appear_in_descriptions() -> None:
    assert (
        redact_url("http://admin:secret@10.0.0.5:8080/snap?x=1")
        == "http://***@10.0.0.5:8080/snap?x=1"
    )
    source = SnapshotSource("http://admin:secret@cam/snap.jpg", None, username="u")  # type: ignore[arg-type]
    assert "secret" not in source.describe()


# -- MJPEG ------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_length", [True, False])
async def test_mjpeg_gives_the_newest_frame_not_a_backlog(content_length: bool) -> None:
    async with (
        camera(fps=100, content_length=content_length) as cam,
        aiohttp.ClientSession() as session,
    ):
        source = MjpegSource(f"{cam.url}/stream.mjpg", session, timeout=5)
        await source.start()
        try:
            first = frame_number((await source.read()).image)
            # a slow detector: the source takes in 30 frames meanwhile
            received = source.received
            await until(lambda: source.received >= received + 30, "30 more frames came in")
            latest = frame_number((await source.read()).image)
            sent = cam.counter % 256
            assert latest > first + 20, "the source handed out an old, buffered frame"
            assert sent - latest <= 3
            assert source.dropped > 20
        finally:
            await source.close()


async def test_mjpeg_camera_that_drops_and_comes_back() -> None:
    async with camera(fps=50) as cam, aiohttp.ClientSession() as session:
        source = MjpegSource(f"{cam.url}/stream.mjpg", session, timeout=1)
        await source.start()
        try:
            await source.read()
            cam.down = True

            async def read_until_error() -> None:
                for _ in range(20):  # frames already in flight may still arrive
                    await source.read()

            with pytest.raises(SourceError):
                await read_until_error()
            cam.down = False
            deadline = time.monotonic() + 10
            while True:
                try:
                    frame = await source.read()
                    break
                except SourceError:
                    assert time.monotonic() < deadline, "the stream never came back"
                    await asyncio.sleep(0.2)
            assert frame.image.shape == (120, 160, 3)
        finally:
            await source.close()


async def test_mjpeg_on_a_url_that_is_not_a_stream_is_an_error() -> None:
    async with camera() as cam, aiohttp.ClientSession() as session:
        source = MjpegSource(f"{cam.url}/snapshot.jpg", session, timeout=1)
        await source.start()
        try:
            with pytest.raises(SourceError, match="not a multipart stream"):
                await source.read()
        finally:
            await source.close()


def test_multipart_parser_handles_any_chunking() -> None:
    bodies = [b"\xff\xd8" + bytes([i]) * (100 + i) + b"\xff\xd9" for i in range(5)]
    stream = (
        b"".join(
            b"--b\r\nContent-Type: image/jpeg\r\n"
            + (f"Content-Length: {len(x)}\r\n".encode() if i % 2 else b"")
            + b"\r\n"
            + x
            + b"\r\n"
            for i, x in enumerate(bodies)
        )
        + b"--b\r\n"
    )
    for size in (1, 7, 64, len(stream)):
        parser = MultipartParser("b")
        parts = [p for i in range(0, len(stream), size) for p in parser.feed(stream[i : i + size])]
        assert parts == bodies


def test_multipart_parser_refuses_an_endless_part() -> None:
    parser = MultipartParser("b", max_part=1000)
    parser.feed(b"--b\r\n\r\n")
    with pytest.raises(SourceError, match="over the size limit"):
        parser.feed(b"x" * 2000)


def test_boundary_parsing() -> None:
    assert multipart_boundary('multipart/x-mixed-replace; boundary="--myboundary"') == "myboundary"
    assert multipart_boundary("multipart/x-mixed-replace;boundary=abc") == "abc"
    assert multipart_boundary("image/jpeg") is None


# -- video / RTSP ----------------------------------------------------------------------------


def _record(path: Path, frames: int, fps: int = 25) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height = 160, 120
        stream.pix_fmt = "yuvj420p"
        for i in range(1, frames + 1):
            frame = av.VideoFrame.from_ndarray(numbered_frame(i), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


async def test_recorded_video_replays_every_frame_in_order(tmp_path: Path) -> None:
    path = tmp_path / "line.mkv"
    _record(path, 30)
    source = VideoSource(str(path))
    await source.start()
    try:
        numbers = []
        while True:
            try:
                numbers.append(frame_number((await source.read()).image))
            except SourceExhaustedError:
                break
        assert numbers == list(range(1, 31))
    finally:
        await source.close()


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
async def test_video_as_a_live_camera_hands_out_the_newest_frame(
    tmp_path: Path, backend: str
) -> None:
    # `realtime` plays the file at its own rate, as an RTSP camera would send it: same code path.
    path = tmp_path / "line.mkv"
    _record(path, 100, fps=50)
    source = VideoSource(str(path), realtime=True, backend=backend, timeout=5)
    await source.start()
    try:
        first = frame_number((await source.read()).image)
        # a slow detector: the source decodes 30 frames meanwhile (a source that queued its
        # frames would wait for this one to take them instead)
        decoded = source.decoded
        await until(lambda: source.decoded >= decoded + 30, "30 more frames were decoded")
        latest = frame_number((await source.read()).image)
        assert latest - first >= 20, "frames were queued instead of replaced"
    finally:
        await source.close()


async def test_unreachable_rtsp_camera_is_a_source_error() -> None:
    source = VideoSource("rtsp://127.0.0.1:9/stream", timeout=1)
    await source.start()
    try:
        with pytest.raises(SourceError, match="cannot open"):
            await source.read()
    finally:
        await source.close()


# -- push --------------------------------------------------------------------------------------


async def test_push_source_hands_over_pushed_frames_with_part_ids() -> None:
    source = PushSource("ha_camera")
    await source.start()
    await source.push(jpeg(numbered_frame(1)), part_id="P-1")
    await source.push(numbered_frame(2), part_id="P-2", lot_id="L-9")
    frame = await source.read()  # the newest wins
    assert (frame_number(frame.image), frame.part_id, frame.lot_id) == (2, "P-2", "L-9")
    with pytest.raises(ImageDecodeError):
        await source.push(b"")
    reader = asyncio.create_task(source.read())
    # A short look (50 ms) for an answer that should not come; the push below then shows
    # the reader was waiting for it (a stale frame or an error would fail there too).
    await asyncio.sleep(0.05)
    assert not reader.done(), "an idle push source must wait, not fail"
    await source.push(np.zeros((10, 10, 3), np.uint8))
    assert (await asyncio.wait_for(reader, 1)).image.shape == (10, 10, 3)
    await source.close()
