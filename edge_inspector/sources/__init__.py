"""Frame sources: folders and file lists, HTTP snapshots, MJPEG, RTSP/video, push, synthetic."""

from __future__ import annotations

from concurrent.futures import Executor

import aiohttp

from ..config import (
    FilesSourceConfig,
    FolderSourceConfig,
    HttpSnapshotSourceConfig,
    MjpegSourceConfig,
    PushSourceConfig,
    RtspSourceConfig,
    SourceConfig,
    SyntheticSourceConfig,
)
from .base import Backoff, Captured, FrameHandoff, FrameSource
from .files import ImageFilesSource
from .http import MjpegSource, SnapshotSource
from .push import PushSource
from .synthetic import SyntheticSource
from .video import VideoSource

__all__ = [
    "Backoff",
    "Captured",
    "FrameHandoff",
    "FrameSource",
    "ImageFilesSource",
    "MjpegSource",
    "PushSource",
    "SnapshotSource",
    "SyntheticSource",
    "VideoSource",
    "build_source",
]


def build_source(
    config: SourceConfig,
    *,
    name: str,
    session: aiohttp.ClientSession | None,
    executor: Executor | None,
) -> FrameSource:
    """Make the source a station's configuration describes."""
    match config:
        case FolderSourceConfig():
            return ImageFilesSource(
                folder=config.path,
                pattern=config.pattern,
                recursive=config.recursive,
                loop=config.loop,
                executor=executor,
            )
        case FilesSourceConfig():
            return ImageFilesSource(config.paths, loop=config.loop, executor=executor)
        case HttpSnapshotSourceConfig() | MjpegSourceConfig():
            if session is None:
                raise ValueError("an HTTP source needs an aiohttp session")
            cls = SnapshotSource if isinstance(config, HttpSnapshotSourceConfig) else MjpegSource
            return cls(
                config.url,
                session,
                username=config.username,
                password=config.password,
                timeout=config.timeout,
                verify_tls=config.verify_tls,
                executor=executor,
            )
        case RtspSourceConfig():
            return VideoSource(
                config.url,
                backend=config.backend,
                transport=config.transport,
                timeout=config.timeout,
                realtime=config.realtime,
                loop=config.loop,
                executor=executor,
            )
        case PushSourceConfig():
            return PushSource(name, executor=executor)
        case SyntheticSourceConfig():
            from ..demo.synthetic import ConveyorCamera

            camera = ConveyorCamera(
                width=config.width,
                height=config.height,
                seed=config.seed,
                defect_rate=config.defect_rate,
                speed=config.speed,
            )
            return SyntheticSource(camera, executor=executor)
    raise ValueError(f"unknown source {config!r}")
