"""The engine: every station of a configuration, their shared models, the store and the sinks."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from .config import EngineConfig, StationConfig
from .contract import ImageKind, VlmStatus
from .detect.autoruntime import choose_runtime
from .detect.batcher import InferenceQueue, inference_thread
from .detect.detector import YoloDetector
from .errors import (
    EdgeInspectorError,
    ImageNotFoundError,
    IncidentNotFoundError,
    InputError,
    ManualsNotIndexedError,
    ModelError,
    RefusedError,
    StationNotFoundError,
)
from .events import (
    ActionRecord,
    Incident,
    IncidentState,
    InspectionResult,
    QualityReport,
    StationState,
    VlmResult,
)
from .holdback import HoldBackFanout
from .plc.actions import PlcActionPort  # no protocol library until an action runs
from .quality import QualityMonitor
from .sinks import EventSink
from .sources import FrameSource, build_source
from .station import Station
from .store import ClassCount, RateBucket, Store
from .tasks import cancel
from .tools.actions import ActionGuard, ActionPort, WebhookPort
from .vlm.enricher import IncidentEnricher, pending_result

if TYPE_CHECKING:
    from .manuals import ManualHit, ManualIndex
    from .plc.link import PlcLink

__all__ = ["Engine"]

_MAX_LIMIT = 500  # incidents in one answer
_MIN_BUCKET_S = 10.0  # the finest rate series

_LOGGER = logging.getLogger(__name__)
_RETENTION_INTERVAL = 3600.0

type ModelKey = tuple[Path, int, str, bool, str]


def _model_key(station: StationConfig) -> ModelKey:
    m = station.model
    return (m.path, m.imgsz, m.device, m.half, m.runtime)


class Engine:
    """Runs the stations of one configuration. Use `async with Engine(config) as engine:`."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        sinks: Iterable[EventSink] = (),
        session: aiohttp.ClientSession | None = None,
        store: Store | None = None,
        cache_dir: Path | None = None,
        source_factory: Callable[[StationConfig], FrameSource] | None = None,
        inference_executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.config = config
        self.store = store or Store(config.store.path, config.store.retention)
        # the stations with `vlm_hold` announce a defect once the VLM has judged it; the
        # enricher (which judges it) hears of it at once
        self.sinks = HoldBackFanout(
            sinks,
            max_wait={s.id: s.vlm_hold.max_wait for s in config.stations if s.vlm_hold.enabled},
            store=self.store,
            at_once=lambda sink: sink is self.enricher,
        )
        self._own_session = session is None
        self._session = session
        self._cache_dir = cache_dir
        self._source_factory = source_factory  # default: the source the configuration names
        self._own_inference = inference_executor is None
        self._inference_executor = inference_executor or inference_thread()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edge_inspector_io")
        self._inference: dict[ModelKey, InferenceQueue] = {}
        self.stations: dict[str, Station] = {}
        self.failed: dict[str, StationState] = {}  # stations that could not start, and why
        self._retention_task: asyncio.Task[None] | None = None
        # Where mapped actions go, by target type; attach_mqtt adds `mqtt`, the HA adapter
        # `service`.
        plc_port = PlcActionPort()
        self.action_ports: dict[str, ActionPort] = {
            "webhook": WebhookPort(self._http),
            "modbus": plc_port,
            "opcua": plc_port,
        }
        self.actions = ActionGuard(config.vlm, self.action_ports)
        self.enricher: IncidentEnricher | None = None
        self.manuals: ManualIndex | None = None
        self.plc: dict[str, PlcLink] = {}  # stations' PLC links, by station id
        self.quality_monitor = QualityMonitor(
            self.store,
            {s.id: s.name for s in config.stations},
            config.quality,
            self.sinks,
            memory=self.store,
        )

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise EdgeInspectorError("the engine is not running")
        return self._session

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the store, load every model once, start every station that can start."""
        await self.store.open()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        sharing = collections.Counter(_model_key(s) for s in self.config.stations)
        for key, stations in sharing.items():
            if (queue := await self._start_model(key, stations)) is not None:
                self._inference[key] = queue
        await self._open_manuals()
        vlm_initial: VlmResult | None = None
        if self.config.vlm.enabled:
            self.enricher = await self._start_vlm()
            vlm_initial = pending_result(self.config.vlm.model)
        for config in self.config.stations:
            await self._start_station(config, vlm_initial)
        await self._start_plc()
        self.sinks.add(self.quality_monitor)
        self.quality_monitor.start()
        self._retention_task = asyncio.create_task(
            self._retention(), name="edge_inspector retention"
        )

    async def _start_model(self, key: ModelKey, stations: int = 1) -> InferenceQueue | None:
        """Choose what runs a model for the `stations` that share it (`runtime: auto` exports
        and times it, once: see detect.autoruntime), then load it; all of it on the inference
        thread."""
        path, imgsz, device, half, runtime = key
        loop = asyncio.get_running_loop()
        try:
            choice = await loop.run_in_executor(
                self._inference_executor,
                functools.partial(
                    choose_runtime,
                    path,
                    runtime=runtime,
                    imgsz=imgsz,
                    device=device,
                    half=half,
                    cache_dir=self._cache_dir,
                    stations=min(stations, self.config.detection.max_batch),
                ),
            )
        except ModelError as exc:
            _LOGGER.error("%s", exc)
            return None
        if choice.timings:
            _LOGGER.info("model %s @%d:\n%s", path.name, imgsz, choice.table())
        elif choice.path != path:
            _LOGGER.info(
                "model %s @%d: runs %s (%s)", path.name, imgsz, choice.runtime, choice.reason
            )
        max_batch = self.config.detection.max_batch
        if choice.max_batch is not None:  # batches do not pay on this runtime, here
            max_batch = min(max_batch, choice.max_batch)
        queue = InferenceQueue(
            YoloDetector(
                choice.path,
                imgsz=imgsz,
                device=device,
                half=half,
                cache_dir=self._cache_dir,
                source=path,
            ),
            max_batch=max_batch,
            batch_window=self.config.detection.batch_window_ms / 1000,
            executor=self._inference_executor,
        )
        try:
            await queue.start()
        except ModelError as exc:
            _LOGGER.error("%s", exc)
            await queue.close()
            return None
        return queue

    async def _start_plc(self) -> None:
        """A PLC link for each running station that has one (it connects in the background:
        the station inspects whether or not the PLC is there)."""
        for station in self.stations.values():
            if station.config.plc is None:
                continue
            from .plc.link import PlcLink

            try:
                link = PlcLink(station, station.config.plc)
            except EdgeInspectorError as exc:
                _LOGGER.error("station %s: %s", station.id, exc)
                station.set_plc("unavailable", str(exc))
                continue
            self.sinks.add(link)
            await link.start()
            self.plc[station.id] = link

    async def _open_manuals(self) -> None:
        """The manuals index (for the VLM and for questions), indexed from the folder if set."""
        from .manuals import ManualIndex

        if self.config.manuals.dir is not None or self.config.manuals_index.exists():
            self.manuals = ManualIndex(self.config.manuals_index)
            if self.config.manuals.dir is not None:
                await self._index_manuals(self.manuals)

    async def search_manuals(self, query: str, *, limit: int = 3) -> list[ManualHit]:
        """Keyword search of the manuals (ManualsNotIndexedError when none are configured)."""
        manuals = self.manuals
        if manuals is None:
            raise ManualsNotIndexedError("no equipment manuals are indexed")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: manuals.search(query, limit=limit)
        )

    async def _start_vlm(self) -> IncidentEnricher:
        from .vlm import OllamaVlm, VlmAgent

        # built on a worker: an HTTP client loads the CA certificates (blocking file I/O)
        vlm = await asyncio.get_running_loop().run_in_executor(
            self._executor, OllamaVlm, self.config.vlm
        )
        agent = VlmAgent(
            vlm,
            self.config.vlm,
            self.actions,
            manuals=self.manuals,
            manuals_config=self.config.manuals,
        )
        enricher = IncidentEnricher(
            self.config,
            self.store,
            self.sinks,
            agent,
            executor=self._executor,
            on_backlog=self._vlm_backlog_changed,
        )
        self.sinks.add(enricher)
        await enricher.start()
        return enricher

    def _vlm_backlog_changed(self, station_id: str) -> None:
        if (station := self.stations.get(station_id)) is not None:
            station.refresh_state()  # its state shows its incidents waiting for the VLM

    async def _index_manuals(self, manuals: ManualIndex) -> None:
        folder = self.config.manuals.dir
        assert folder is not None
        try:
            report = await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: manuals.index(folder)
            )
        except EdgeInspectorError as exc:
            _LOGGER.error("manuals: %s", exc)
            return
        for name, error in report.failed:
            _LOGGER.warning("manuals: %s skipped: %s", name, error)
        _LOGGER.info(
            "manuals: %d passages (%d new, %d changed, %d removed, %d unchanged files)",
            report.chunks,
            len(report.added),
            len(report.updated),
            len(report.removed),
            len(report.unchanged),
        )

    async def resolve_action(
        self, incident_id: str, request_id: str, *, approve: bool, by: str
    ) -> ActionRecord:
        """A human approves or declines an action the VLM asked to confirm."""
        if self.enricher is None:
            raise RefusedError("the VLM is not configured")
        return await self.enricher.resolve_action(incident_id, request_id, approve=approve, by=by)

    async def _start_station(self, config: StationConfig, vlm_initial: VlmResult | None) -> None:
        queue = self._inference.get(_model_key(config))
        error: str | None = None
        if queue is None:
            error = f"model {config.model.path} could not be loaded"
        else:
            names = set(queue.detector.names.values())
            unknown = sorted(set(config.defects) - names)
            if unknown:
                error = (
                    f"defect classes {', '.join(unknown)} are not in model "
                    f"{config.model.path.name} "
                    f"(it knows: {', '.join(sorted(names))})"
                )
        if error is not None or queue is None:
            _LOGGER.error("station %s cannot start: %s", config.id, error)
            self.failed[config.id] = StationState(
                station_id=config.id,
                name=config.name,
                enabled=config.enabled,
                available=False,
                mode=config.mode,
                error=error,
                thresholds={name: d.confidence for name, d in config.defects.items()},
                line=config.line,
                product=config.product,
                model=config.model.path.name,
                push=config.source.type == "push",
                started=False,
                updated_at=datetime.now(UTC),
            )
            await self.sinks.on_station_state(self.failed[config.id])
            return
        if self._source_factory is not None:
            source = self._source_factory(config)
        else:
            source = build_source(
                config.source, name=config.id, session=self._session, executor=self._executor
            )
        station = Station(
            config,
            source=source,
            inference=queue,
            store=self.store,
            sink=self.sinks,
            executor=self._executor,
            vlm_initial=vlm_initial,
            vlm_backlog=None
            if self.enricher is None
            else functools.partial(self.enricher.station_backlog, config.id),
        )
        self.stations[config.id] = station
        await station.start()

    async def stop(self) -> None:
        """Stop every station, let them record what they detected, close everything."""
        await cancel(self._retention_task)
        self._retention_task = None
        await self.quality_monitor.stop()
        with contextlib.suppress(ValueError):  # not added: the engine did not start
            self.sinks.remove(self.quality_monitor)
        for link in self.plc.values():
            await link.stop()
            self.sinks.remove(link)
        self.plc.clear()
        await self.stop_stations()
        if self.enricher is not None:
            await self.enricher.stop()
            self.sinks.remove(self.enricher)
            self.enricher = None
        await self.sinks.release_held()  # as unconfirmed: the VLM has stopped
        for queue in self._inference.values():
            await queue.close()
        self._inference.clear()
        if self._own_inference:
            self._inference_executor.shutdown(wait=True, cancel_futures=True)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
        await self.store.close()
        self._executor.shutdown(wait=True)

    async def stop_stations(self) -> None:
        """Stop every station (no new frames, what was detected is recorded); the VLM, the
        store and the sinks keep running until `stop()`."""
        await asyncio.gather(*(s.stop() for s in self.stations.values()))

    def station(self, station_id: str) -> Station:
        try:
            return self.stations[station_id]
        except KeyError:
            if station_id in self.failed:
                raise RefusedError(
                    f"station {station_id} is not running: {self.failed[station_id].error}"
                ) from None
            raise StationNotFoundError(f"no station {station_id!r}") from None

    @property
    def inference_depth(self) -> int:
        """Frames waiting for a model, over every model."""
        return sum(queue.depth for queue in self._inference.values())

    # -- the contract (InspectionEngine) ----------------------------------------------------

    def add_sink(self, sink: EventSink) -> None:
        self.sinks.add(sink)

    def set_service_port(self, port: ActionPort) -> None:
        self.action_ports["service"] = port

    @property
    def connected(self) -> bool:
        return True  # in this process

    @property
    def token_refused(self) -> bool:
        return False  # in this process

    def states(self) -> list[StationState]:
        running = [s.state() for s in self.stations.values()]
        return running + list(self.failed.values())

    def is_running(self, station_id: str) -> bool:
        return station_id in self.stations

    async def set_enabled(self, station_id: str, enabled: bool) -> StationState:
        """Pause or resume a station."""
        station = self.station(station_id)
        station.set_enabled(enabled)
        return station.state()

    async def set_threshold(
        self, station_id: str, class_name: str | None, confidence: float
    ) -> StationState:
        """Change one defect class's threshold, or every class's with `class_name` None."""
        station = self.station(station_id)
        for name in [class_name] if class_name else list(station.rules.thresholds):
            station.set_threshold(name, confidence)
        return station.state()

    async def inspect_image(
        self,
        station_id: str,
        image: bytes,
        *,
        part_id: str | None = None,
        lot_id: str | None = None,
    ) -> InspectionResult:
        return await self.station(station_id).inspect_image(image, part_id=part_id, lot_id=lot_id)

    async def inspect_now(
        self, station_id: str, *, part_id: str | None = None, lot_id: str | None = None
    ) -> InspectionResult:
        """Inspect one fresh frame of a station now and return the result, once it is stored
        (its incidents can be read at once)."""
        return await self.station(station_id).inspect_now(
            part_id=part_id, lot_id=lot_id, wait_recorded=True
        )

    async def incidents(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Incident]:
        return await self.store.incidents(
            station_id=station_id,
            since=since,
            until=until,
            limit=max(1, min(limit, _MAX_LIMIT)),
            offset=max(0, offset),
        )

    async def incident(self, incident_id: str) -> Incident | None:
        return await self.store.incident(incident_id)

    async def last_incident(self, station_id: str | None = None) -> Incident | None:
        return await self.store.last_incident(station_id)

    async def incident_image(self, incident_id: str, kind: ImageKind = "frame") -> bytes:
        incident = await self.store.incident(incident_id)
        if incident is None:
            raise IncidentNotFoundError(f"no incident {incident_id!r}")
        try:
            stored = incident.image_path(kind)
        except KeyError:
            raise ImageNotFoundError("images are frame, crop or raw") from None
        loop = asyncio.get_running_loop()

        def read() -> bytes | None:
            path = self.store.image_file(stored)
            try:
                return None if path is None else path.read_bytes()
            except OSError:
                return None

        data = await loop.run_in_executor(self._executor, read)
        if data is None:
            raise ImageNotFoundError(f"the incident has no {kind} image (kept)")
        return data

    async def counts_by_class(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[ClassCount]:
        return await self.store.counts_by_class(station_id=station_id, since=since, until=until)

    async def quality(
        self, *, period: str | None = None, station_id: str | None = None
    ) -> QualityReport:
        return await self.quality_monitor.report(period, station_id)

    def latest_quality(self) -> QualityReport | None:
        return self.quality_monitor.latest

    async def rate_series(
        self, *, station_id: str | None, since: datetime, until: datetime, bucket: float
    ) -> list[RateBucket]:
        return await self.store.rate_series(
            station_id=station_id, since=since, until=until, bucket=max(_MIN_BUCKET_S, bucket)
        )

    async def set_verdict(
        self, incident_id: str, state: IncidentState, *, by: str, note: str | None = None
    ) -> Incident:
        """An operator's verdict on an incident, appended to its audit trail (`extra.feedback`)
        and told to every sink."""
        entry = {"state": str(state), "by": by, "at": datetime.now(UTC).isoformat(), "note": note}

        def change(current: Incident) -> Incident:
            feedback = [*current.extra.get("feedback", []), entry]
            return current.model_copy(
                update={"state": state, "extra": {**current.extra, "feedback": feedback}}
            )

        updated = await self.store.modify_incident(incident_id, change)
        if updated is None:
            raise IncidentNotFoundError(f"no incident {incident_id!r}")
        await self.sinks.on_incident_update(updated)
        return updated

    async def vlm_status(self) -> VlmStatus | None:
        enricher = self.enricher
        if enricher is None:
            return None
        return VlmStatus(
            error=enricher.last_error,
            model_missing=enricher.model_missing,
            breaker=enricher.breaker.state,
            queue_depth=enricher.queue_depth,
            enriched=enricher.enriched,
            oldest_pending_s=enricher.oldest_pending_s,
            skipped=enricher.skipped,
            coalesced=enricher.coalesced,
        )

    async def report_missed_defect(
        self,
        station_id: str,
        defect_class: str,
        *,
        by: str,
        part_id: str | None = None,
        lot_id: str | None = None,
        note: str | None = None,
    ) -> Incident:
        """A defect a person found that the station passed: a confirmed incident marked
        `extra.missed`, counted in the false-accept rate."""
        import uuid

        station = self.station(station_id)
        if defect_class not in station.config.defects:
            known = ", ".join(sorted(station.config.defects))
            raise InputError(f"defect_class: {defect_class!r} is not one of {known}")
        for name, value, limit in (("part_id", part_id, 128), ("lot_id", lot_id, 128)):
            if value is not None and not 0 < len(value) <= limit:
                raise InputError(f"{name}: 1 to {limit} characters")
        if note is not None and len(note) > 500:
            raise InputError("note: at most 500 characters")
        now = datetime.now(UTC)
        incident = Incident(
            incident_id=uuid.uuid4().hex,
            station_id=station_id,
            station_name=station.config.name,
            created_at=now,
            inspection_id="",
            part_id=part_id,
            lot_id=lot_id,
            defect_class=defect_class,
            confidence=0.0,
            boxes=(),
            detections=(),
            state=IncidentState.CONFIRMED,
            model=station.model_info,
            latency_ms=0.0,
            extra={
                "missed": True,
                "feedback": [
                    {"state": "confirmed", "by": by[:100], "at": now.isoformat(), "note": note}
                ],
            },
        )
        await self.store.add_incident(incident)
        await self.sinks.on_missed_defect(incident)
        return incident

    def _finite(self) -> list[Station]:
        return [
            s for s in self.stations.values() if not s.source.live and s.config.mode == "continuous"
        ]

    @property
    def has_finite_sources(self) -> bool:
        """Whether some station reads a source that ends (a folder, a video file)."""
        return bool(self._finite())

    async def wait_finished(self) -> None:
        """Wait until every station with a finite source has read all of it."""
        await asyncio.gather(*(s.finished.wait() for s in self._finite()))

    async def _retention(self) -> None:
        while True:
            try:
                await self.store.apply_retention()
            except EdgeInspectorError as exc:
                _LOGGER.error("retention failed: %s", exc)
            await asyncio.sleep(_RETENTION_INTERVAL)


if TYPE_CHECKING:
    from .contract import InspectionEngine

    def _keeps_the_contract(engine: Engine) -> InspectionEngine:
        return engine  # checked by mypy: the engine in this process is an InspectionEngine
