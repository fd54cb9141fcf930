"""The SQLite history: inspections, incidents and their images, with a retention policy.

All database and file work runs on one dedicated thread (SQLite connections are not shared
between threads), so nothing here blocks the event loop. An incident is committed with a full
sync before `add_incident` returns: the engine tells nobody of an incident it has not stored.
Inspections are many and small; they are buffered and committed in batches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..config import RetentionConfig
from ..errors import StoreError
from ..events import Incident, IncidentState, InspectionResult

__all__ = ["ClassCount", "FeedbackCounts", "InspectionCounts", "RetentionReport", "Store"]

_LOGGER = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (
    id TEXT PRIMARY KEY,
    station_id TEXT NOT NULL,
    ts REAL NOT NULL,
    verdict TEXT NOT NULL,
    part_id TEXT,
    lot_id TEXT,
    defect_classes TEXT NOT NULL DEFAULT '',
    detections INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    payload TEXT
);
CREATE INDEX IF NOT EXISTS inspections_station_ts ON inspections (station_id, ts);
CREATE INDEX IF NOT EXISTS inspections_ts ON inspections (ts);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    station_id TEXT NOT NULL,
    ts REAL NOT NULL,
    defect_class TEXT NOT NULL,
    confidence REAL NOT NULL,
    state TEXT NOT NULL,
    part_id TEXT,
    lot_id TEXT,
    frame_path TEXT,
    crop_path TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_station_ts ON incidents (station_id, ts);
CREATE INDEX IF NOT EXISTS incidents_ts ON incidents (ts);
CREATE TABLE IF NOT EXISTS images (
    path TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    bytes INTEGER NOT NULL,
    owner TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_ts ON images (ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class ClassCount:
    defect_class: str
    count: int


@dataclass(frozen=True, slots=True)
class InspectionCounts:
    """Inspections and the failed ones (their rates are `edge_inspector.quality`'s)."""

    inspections: int
    failed: int


@dataclass(frozen=True, slots=True)
class RateBucket:
    """Inspections and failures in one time bucket (a point of a defect-rate chart)."""

    start: datetime
    inspections: int
    failed: int
    incidents: int

    @property
    def defect_rate(self) -> float:
        return self.failed / self.inspections if self.inspections else 0.0


@dataclass(frozen=True, slots=True)
class FeedbackCounts:
    """Operators' verdicts: incidents confirmed or rejected, and defects the engine missed."""

    confirmed: int
    rejected: int
    missed: int


@dataclass(frozen=True, slots=True)
class RetentionReport:
    inspections_deleted: int
    incidents_deleted: int
    images_deleted: int
    bytes_freed: int


def _ts(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


class Store:
    """History and images under one folder: `history.sqlite3` and `images/`."""

    def __init__(
        self,
        root: Path,
        retention: RetentionConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        flush_rows: int = 500,
    ) -> None:
        self.root = root
        self.images_dir = root / "images"
        self.retention = retention or RetentionConfig()
        self._clock = clock
        self._flush_rows = flush_rows
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="edge_inspector_store"
        )
        self._db: sqlite3.Connection | None = None
        self._buffer: collections.deque[tuple[object, ...]] = collections.deque()
        self._buffer_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    async def _run[T](self, fn: Callable[[], T]) -> T:
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except RuntimeError as exc:  # its thread is shut down: a late caller (an unload's race)
            raise StoreError(f"{self.root}: the store is closed") from exc
        try:
            return await future
        except sqlite3.Error as exc:
            raise StoreError(f"{self.root}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"{self.root}: {exc.strerror or exc}") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    async def open(self) -> None:
        def _open() -> None:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.root / "history.sqlite3", isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._db = db

        await self._run(_open)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._flush()
                self._db.close()
                self._db = None

        with contextlib.suppress(StoreError, RuntimeError):
            await self._run(_close)
        self._executor.shutdown(wait=True)

    def _flush(self) -> None:
        with self._buffer_lock:
            rows = list(self._buffer)
            self._buffer.clear()
        if rows:
            with self._conn:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO inspections VALUES (?,?,?,?,?,?,?,?,?,?)", rows
                )

    # -- writes -----------------------------------------------------------------------------

    async def add_inspection(self, result: InspectionResult) -> None:
        """Buffer one inspection; committed in batches (and before any query)."""
        failed = result.verdict == "fail"
        row = (
            result.inspection_id,
            result.station_id,
            result.timestamp.timestamp(),
            str(result.verdict),
            result.part_id,
            result.lot_id,
            ",".join(sorted({d.class_name for d in result.defects})),
            len(result.detections),
            result.latency.total_ms,
            result.model_dump_json() if failed or result.part_id else None,
        )
        with self._buffer_lock:
            self._buffer.append(row)
            full = len(self._buffer) >= self._flush_rows
        if full:
            await self._run(self._flush)

    async def flush(self) -> None:
        await self._run(self._flush)

    async def save_image(self, owner: str, relative: str, data: bytes, moment: datetime) -> str:
        """Write an image under `images/` and account for it; returns its path relative to
        `images/` (what payloads carry: where the image is in the store, not on this disk)."""
        path = self.images_dir / relative
        if not path.resolve().is_relative_to(self.images_dir.resolve()):
            raise StoreError(f"{relative}: outside the image folder")
        relative = path.relative_to(self.images_dir).as_posix()

        def _write() -> str:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            self._conn.execute(
                "INSERT OR REPLACE INTO images VALUES (?,?,?,?)",
                (relative, moment.timestamp(), len(data), owner),
            )
            return relative

        return await self._run(_write)

    async def add_incident(self, incident: Incident) -> None:
        """Commit an incident durably (full sync) before anyone hears of it."""

        def _add() -> None:
            with self._conn:
                self._conn.execute(
                    "INSERT OR REPLACE INTO incidents VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        incident.incident_id,
                        incident.station_id,
                        incident.created_at.timestamp(),
                        incident.defect_class,
                        incident.confidence,
                        str(incident.state),
                        incident.part_id,
                        incident.lot_id,
                        incident.frame_path,
                        incident.crop_path,
                        incident.model_dump_json(),
                    ),
                )

        await self._run(_add)

    async def set_incident_state(self, incident_id: str, state: IncidentState) -> Incident | None:
        return await self.modify_incident(
            incident_id, lambda current: current.model_copy(update={"state": state})
        )

    async def modify_incident(
        self, incident_id: str, change: Callable[[Incident], Incident | None]
    ) -> Incident | None:
        """Read, change and write one incident as one step on the store's thread, so two
        writers (an operator acknowledging, the VLM enriching) never undo each other.
        `change` returns None to leave the incident as it is."""

        def _modify() -> Incident | None:
            found = self._incidents(
                "SELECT payload, frame_path, crop_path FROM incidents WHERE id = ?", (incident_id,)
            )
            if not found:
                return None
            updated = change(found[0])
            if updated is None:
                return found[0]
            with self._conn:
                self._conn.execute(
                    "UPDATE incidents SET state = ?, payload = ? WHERE id = ?",
                    (str(updated.state), updated.model_dump_json(), incident_id),
                )
            return updated

        return await self._run(_modify)

    async def incidents_awaiting_vlm(self, limit: int = 100) -> list[str]:
        """Ids of incidents the VLM has not answered yet (pending or unavailable), oldest first."""
        return await self._run(
            lambda: [
                row[0]
                for row in self._conn.execute(
                    "SELECT id FROM incidents WHERE json_extract(payload, '$.vlm.status') "
                    "IN ('pending', 'unavailable') ORDER BY ts LIMIT ?",
                    (limit,),
                )
            ]
        )

    # -- queries ----------------------------------------------------------------------------

    def _incidents(self, sql: str, args: Iterable[object]) -> list[Incident]:
        rows = self._conn.execute(sql, tuple(args)).fetchall()
        out = []
        for payload, frame_path, crop_path in rows:
            incident = Incident.model_validate_json(payload)
            paths = {
                "frame_path": self.relative_image(frame_path),
                "crop_path": self.relative_image(crop_path),
                "raw_path": self.relative_image(incident.raw_path),
            }
            if any(getattr(incident, name) != value for name, value in paths.items()):
                incident = incident.model_copy(update=paths)
            out.append(incident)
        return out

    def relative_image(self, path: str | None) -> str | None:
        """A stored image's path relative to `images/` (stores before 0.2 kept absolute
        paths; one outside the folder is not the store's and is dropped)."""
        if not path or not Path(path).is_absolute():
            return path
        try:
            return Path(path).relative_to(self.images_dir).as_posix()
        except ValueError:
            return None

    async def incident(self, incident_id: str) -> Incident | None:
        found = await self._run(
            lambda: self._incidents(
                "SELECT payload, frame_path, crop_path FROM incidents WHERE id = ?", (incident_id,)
            )
        )
        return found[0] if found else None

    async def incidents(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Incident]:
        """Incidents, newest first."""
        where, args = self._where(station_id, since, until)
        return await self._run(
            lambda: self._incidents(
                f"SELECT payload, frame_path, crop_path FROM incidents {where} "
                "ORDER BY ts DESC, rowid DESC LIMIT ? OFFSET ?",
                [*args, limit, offset],
            )
        )

    async def last_incident(self, station_id: str | None = None) -> Incident | None:
        found = await self.incidents(station_id=station_id, limit=1)
        return found[0] if found else None

    @staticmethod
    def _where(
        station_id: str | None, since: datetime | None, until: datetime | None
    ) -> tuple[str, list[object]]:
        clauses: list[str] = []
        args: list[object] = []
        if station_id is not None:
            clauses.append("station_id = ?")
            args.append(station_id)
        if since is not None:
            clauses.append("ts >= ?")
            args.append(_ts(since))
        if until is not None:
            clauses.append("ts < ?")
            args.append(_ts(until))
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args

    async def counts_by_class(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[ClassCount]:
        """Incidents per defect class in a time range, most frequent first (a Pareto view)."""
        where, args = self._where(station_id, since, until)

        def _q() -> list[ClassCount]:
            rows = self._conn.execute(
                f"SELECT defect_class, COUNT(*) FROM incidents {where} "
                "GROUP BY defect_class ORDER BY COUNT(*) DESC, defect_class",
                args,
            ).fetchall()
            return [ClassCount(str(c), int(n)) for c, n in rows]

        return await self._run(_q)

    async def inspection_counts(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> InspectionCounts:
        where, args = self._where(station_id, since, until)

        def _q() -> InspectionCounts:
            self._flush()
            total, failed = self._conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(verdict = 'fail'), 0) FROM inspections {where}",
                args,
            ).fetchone()
            return InspectionCounts(int(total), int(failed))

        return await self._run(_q)

    async def inspections(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        verdict: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, object]]:
        """Inspections, newest first, as summaries (the full record is kept only for failed
        inspections and those with a part id: `inspection(id)`)."""
        where, args = self._where(station_id, since, until)
        if verdict is not None:
            where += (" AND" if where else "WHERE") + " verdict = ?"
            args.append(verdict)

        def _q() -> list[dict[str, object]]:
            self._flush()
            rows = self._conn.execute(
                "SELECT id, station_id, ts, verdict, part_id, lot_id, defect_classes, detections, "
                f"latency_ms, payload IS NOT NULL FROM inspections {where} "
                "ORDER BY ts DESC, rowid DESC LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
            return [
                {
                    "inspection_id": r[0],
                    "station_id": r[1],
                    "timestamp": datetime.fromtimestamp(r[2], tz=UTC).isoformat(),
                    "verdict": r[3],
                    "part_id": r[4],
                    "lot_id": r[5],
                    "defect_classes": [c for c in str(r[6]).split(",") if c],
                    "detections": int(r[7]),
                    "latency_ms": round(float(r[8]), 2),
                    "detail": bool(r[9]),
                }
                for r in rows
            ]

        return await self._run(_q)

    def image_file(self, path: str | None) -> Path | None:
        """A stored image's file, only if it lies inside the store's image folder."""
        if not path:
            return None
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = self.images_dir / candidate
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.images_dir.resolve()) or not resolved.is_file():
            return None
        return resolved

    async def rate_series(
        self, *, station_id: str | None, since: datetime, until: datetime, bucket: float
    ) -> list[RateBucket]:
        """Inspections, failures and incidents per `bucket` seconds from `since` to `until`,
        every bucket present (empty ones with zeros), oldest first."""
        if bucket <= 0 or until <= since:
            return []
        start = since.timestamp()
        count = min(int((until.timestamp() - start) // bucket) + 1, 10_000)
        where, args = self._where(station_id, since, until)

        def _q() -> list[RateBucket]:
            self._flush()
            ins = self._conn.execute(
                f"SELECT CAST((ts - ?) / ? AS INTEGER), COUNT(*), "
                f"COALESCE(SUM(verdict = 'fail'), 0) FROM inspections {where} GROUP BY 1",
                [start, bucket, *args],
            ).fetchall()
            inc = self._conn.execute(
                f"SELECT CAST((ts - ?) / ? AS INTEGER), COUNT(*) FROM incidents {where} GROUP BY 1",
                [start, bucket, *args],
            ).fetchall()
            by_ins = {int(i): (int(n), int(f)) for i, n, f in ins}
            by_inc = {int(i): int(n) for i, n in inc}
            return [
                RateBucket(
                    start=datetime.fromtimestamp(start + i * bucket, tz=since.tzinfo or UTC),
                    inspections=by_ins.get(i, (0, 0))[0],
                    failed=by_ins.get(i, (0, 0))[1],
                    incidents=by_inc.get(i, 0),
                )
                for i in range(count)
            ]

        return await self._run(_q)

    async def feedback_counts(
        self,
        *,
        station_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> FeedbackCounts:
        """Operators' verdicts on the incidents of a time range."""
        where, args = self._where(station_id, since, until)
        extra = "AND" if where else "WHERE"

        def _q() -> FeedbackCounts:
            rows = self._conn.execute(
                "SELECT state, COALESCE(json_extract(payload, '$.extra.missed'), 0), COUNT(*) "
                f"FROM incidents {where} {extra} state IN ('confirmed', 'rejected') "
                "GROUP BY 1, 2",
                tuple(args),
            ).fetchall()
            counts = {(state, bool(missed)): n for state, missed, n in rows}
            return FeedbackCounts(
                confirmed=counts.get(("confirmed", False), 0),
                rejected=counts.get(("rejected", False), 0) + counts.get(("rejected", True), 0),
                missed=counts.get(("confirmed", True), 0),
            )

        return await self._run(_q)

    async def inspection(self, inspection_id: str) -> InspectionResult | None:
        def _q() -> InspectionResult | None:
            self._flush()
            row = self._conn.execute(
                "SELECT payload FROM inspections WHERE id = ?", (inspection_id,)
            ).fetchone()
            return InspectionResult.model_validate_json(row[0]) if row and row[0] else None

        return await self._run(_q)

    # -- retention --------------------------------------------------------------------------

    async def apply_retention(self) -> RetentionReport:
        """Delete history older than `max_age_days`, then the oldest images over `max_images_mb`."""
        retention = self.retention

        def _apply() -> RetentionReport:
            self._flush()
            db = self._conn
            cutoff = self._clock() - retention.max_age_days * 86400
            with db:
                n_insp = db.execute("DELETE FROM inspections WHERE ts < ?", (cutoff,)).rowcount
                n_inc = db.execute("DELETE FROM incidents WHERE ts < ?", (cutoff,)).rowcount
                doomed = db.execute(
                    "SELECT path, bytes FROM images WHERE ts < ?", (cutoff,)
                ).fetchall()
                limit = int(retention.max_images_mb * 1024 * 1024)
                (total,) = db.execute(
                    "SELECT COALESCE(SUM(bytes), 0) FROM images WHERE ts >= ?", (cutoff,)
                ).fetchone()
                if total > limit:
                    for path, size in db.execute(
                        "SELECT path, bytes FROM images WHERE ts >= ? ORDER BY ts, path", (cutoff,)
                    ):
                        if total <= limit:
                            break
                        doomed.append((path, size))
                        total -= size
                freed = 0
                for path, size in doomed:
                    with contextlib.suppress(FileNotFoundError):
                        (self.images_dir / path).unlink()  # older stores: absolute paths
                    freed += int(size)
                    db.execute("DELETE FROM images WHERE path = ?", (path,))
                    db.execute(
                        "UPDATE incidents SET frame_path = NULL WHERE frame_path = ?", (path,)
                    )
                    db.execute("UPDATE incidents SET crop_path = NULL WHERE crop_path = ?", (path,))
            if doomed:
                _LOGGER.info(
                    "retention: deleted %d images (%.1f MB) to stay within %.0f days and %.0f MB",
                    len(doomed),
                    freed / 1e6,
                    retention.max_age_days,
                    retention.max_images_mb,
                )
            return RetentionReport(n_insp, n_inc, len(doomed), freed)

        return await self._run(_apply)

    async def get_meta(self, key: str) -> str | None:
        """A value the engine keeps across restarts (the last shift it reported)."""

        def _q() -> str | None:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(_q)

    async def set_meta(self, key: str, value: str) -> None:
        def _q() -> None:
            with self._conn:
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

        await self._run(_q)

    async def image_bytes(self) -> int:
        """Bytes of images the store accounts for."""
        return await self._run(
            lambda: int(
                self._conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM images").fetchone()[0]
            )
        )
