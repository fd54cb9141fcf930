"""HTTP cameras: a still-image URL fetched per inspection, and MJPEG streams."""

from __future__ import annotations

import asyncio
import logging
from base64 import b64encode
from concurrent.futures import Executor

import aiohttp

from ..errors import SourceError
from ..frames import Frame, decode_image
from ..redact import redact
from ..tasks import cancel
from .base import Backoff, Captured, FrameHandoff, FrameSource

__all__ = ["MjpegSource", "MultipartParser", "SnapshotSource", "multipart_boundary", "redact_url"]

_LOGGER = logging.getLogger(__name__)
MAX_FRAME_BYTES = 64 * 1024 * 1024


def redact_url(url: str) -> str:
    """The URL without its credentials (user information, secret query values)."""
    return redact(url)


class _HttpCamera(FrameSource):
    """What every HTTP camera has: a URL, the injected session, credentials and a timeout."""

    kind = "http"

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        verify_tls: bool = True,
        executor: Executor | None = None,
    ) -> None:
        self._url, self._session = url, session
        # HTTP Basic (RFC 7617, UTF-8) as a header: aiohttp 3.14 deprecates BasicAuth, and the
        # function replacing it is not in the aiohttp of older Home Assistant releases.
        self._headers = (
            {
                "Authorization": "Basic "
                + b64encode(f"{username}:{password or ''}".encode()).decode()
            }
            if username
            else {}
        )
        self._timeout_s = timeout
        self._ssl = verify_tls  # True: aiohttp's default verification
        self._executor = executor
        self._seq = 0

    def describe(self) -> str:
        return f"{self.kind} {redact_url(self._url)}"


class SnapshotSource(_HttpCamera):
    """A camera's snapshot URL: each read is one GET, so every frame is fresh."""

    kind = "snapshot"

    async def read(self, *, not_before: float | None = None) -> Frame:
        try:
            async with self._session.get(
                self._url,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                ssl=self._ssl,
            ) as resp:
                if resp.status != 200:
                    raise SourceError(
                        f"{self.describe()}: HTTP {resp.status} {resp.reason or ''}".rstrip()
                    )
                if (resp.content_length or 0) > MAX_FRAME_BYTES:
                    raise SourceError(
                        f"{self.describe()}: snapshot larger than {MAX_FRAME_BYTES} bytes"
                    )
                data = await resp.content.read(MAX_FRAME_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SourceError(
                f"{self.describe()}: {type(exc).__name__}: {exc}".rstrip(": ")
            ) from None
        self._seq += 1
        image = await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: decode_image(data, origin=self.describe())
        )
        return Frame(image, self._seq, redact_url(self._url))


class MjpegSource(_HttpCamera):
    """A multipart/x-mixed-replace MJPEG stream read continuously; the station gets the newest.

    Only the frame the station takes is decoded, so a fast camera costs little CPU when the
    detector is slower. The reader reconnects with capped backoff when the stream drops.
    """

    kind = "mjpeg"
    _handoff: FrameHandoff[bytes] | None = None
    _task: asyncio.Task[None] | None = None
    received = 0

    async def start(self) -> None:
        self._handoff = FrameHandoff(asyncio.get_running_loop(), drop=True)
        self._task = asyncio.create_task(self._run(), name=f"edge_inspector {self.describe()}")

    async def close(self) -> None:
        if self._handoff is not None:
            self._handoff.close()
        await cancel(self._task)

    @property
    def dropped(self) -> int:
        """Frames the camera sent that the station never took (it was busy)."""
        return self._handoff.dropped if self._handoff is not None else 0

    async def read(self, *, not_before: float | None = None) -> Frame:
        if self._handoff is None:
            raise SourceError(f"{self.describe()}: not started")
        item = await self._handoff.get(timeout=self._timeout_s, not_before=not_before)
        image = await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: decode_image(item.payload, origin=self.describe())
        )
        return Frame(image, item.seq, redact_url(self._url), item.captured_at, item.timestamp)

    async def _run(self) -> None:
        assert self._handoff is not None
        backoff = Backoff()
        while not self._handoff.closed:
            try:
                await self._stream(self._handoff, backoff)
                error = "the stream ended"
            except (aiohttp.ClientError, TimeoutError, SourceError) as exc:
                error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if self._handoff.closed:
                return
            _LOGGER.debug("%s: %s", self.describe(), error)
            self._handoff.fail(f"{self.describe()}: {error}")
            await asyncio.sleep(backoff.next_delay())

    async def _stream(self, handoff: FrameHandoff[bytes], backoff: Backoff) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout_s, sock_read=self._timeout_s
        )
        async with self._session.get(
            self._url, headers=self._headers, timeout=timeout, ssl=self._ssl
        ) as resp:
            if resp.status != 200:
                raise SourceError(f"HTTP {resp.status}")
            ctype = resp.headers.get("Content-Type", "")
            boundary = multipart_boundary(ctype)
            if boundary is None:
                raise SourceError(f"not a multipart stream (Content-Type {ctype!r})")
            parser = MultipartParser(boundary)
            async for chunk in resp.content.iter_any():
                for part in parser.feed(chunk):
                    self._seq += 1
                    self.received += 1
                    backoff.reset()
                    if not handoff.put(Captured(part, self._seq)):
                        return


def multipart_boundary(content_type: str) -> str | None:
    """The boundary of a multipart Content-Type header, without leading dashes."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            value = value.strip().strip('"')
            return value[2:] if value.startswith("--") else value
    return None


class MultipartParser:
    """Splits a multipart byte stream into part bodies, tolerant of the ways cameras bend it.

    Uses Content-Length when a part has one, else the next boundary. Raises `SourceError` for a
    part over the size limit (a stream that lost its boundaries would otherwise grow forever).
    """

    def __init__(self, boundary: str, *, max_part: int = MAX_FRAME_BYTES) -> None:
        self._marker = b"--" + boundary.encode("latin-1")
        self._buf = bytearray()
        self._max = max_part

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        parts: list[bytes] = []
        while (part := self._next_part()) is not None:
            parts.append(part)
        return parts

    def _find_head(self) -> tuple[int, int, int] | None:
        """Where the next part's headers start and end and its body starts; None if incomplete."""
        start = self._buf.find(self._marker)
        if start < 0:
            if len(self._buf) > self._max:
                raise SourceError("no multipart boundary within the size limit")
            return None
        head_end = self._buf.find(b"\r\n\r\n", start)
        sep = 4
        if head_end < 0:
            head_end = self._buf.find(b"\n\n", start)
            sep = 2
        if head_end < 0:
            if len(self._buf) - start > 16 * 1024:
                raise SourceError("multipart headers too long")
            return None
        return start, head_end, head_end + sep

    def _next_part(self) -> bytes | None:
        """Take the next complete part off the buffer; None until more bytes arrive."""
        head = self._find_head()
        if head is None:
            return None
        start, head_end, body_start = head
        headers = bytes(self._buf[start + len(self._marker) : head_end]).decode("latin-1")
        length = _content_length(headers)
        if length is not None:
            if length > self._max:
                raise SourceError(f"a part of {length} bytes is over the limit")
            if len(self._buf) < body_start + length:
                return None
            part = bytes(self._buf[body_start : body_start + length])
            del self._buf[: body_start + length]
            return part
        end = self._buf.find(self._marker, body_start)
        if end < 0:
            if len(self._buf) - body_start > self._max:
                raise SourceError("a part is over the size limit")
            return None
        part = bytes(self._buf[body_start:end]).rstrip(b"\r\n")
        del self._buf[:end]
        return part


def _content_length(headers: str) -> int | None:
    for line in headers.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            return int(value.strip())
    return None
