"""A durable outbox: QoS 1 messages wait in SQLite until the broker acknowledges them.

A message is committed before `put` returns and deleted only when the broker's PUBACK for it
arrives, so a broker outage or a killed process loses nothing: what was not acknowledged is sent
again, in order, after the next connect. A message may therefore arrive twice; every payload
carries the incident id so subscribers can drop the duplicate. The outbox is bounded by age and
by count, and says so in the log when it drops the oldest messages.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Outbox", "OutboxMessage"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """Thread-safe: the event loop's executor puts, the MQTT thread takes and acknowledges."""

    def __init__(
        self,
        path: Path,
        *,
        max_messages: int = 100_000,
        max_age_s: float = 7 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, "
            "retain INTEGER NOT NULL, created REAL NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS announced (key TEXT PRIMARY KEY)")
        # Incidents ever enqueued: after a crash, the store is compared with this.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS enqueued (key TEXT PRIMARY KEY, created REAL NOT NULL)"
        )
        self._lock = threading.Lock()
        self._max_messages = max_messages
        self._max_age_s = max_age_s
        self._clock = clock
        self.dropped = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        key: str | None = None,
    ) -> int:
        """Store a message durably (and remember `key` as enqueued); returns its number."""
        now = self._clock()
        with self._lock, self._db:
            seq = self._db.execute(
                "INSERT INTO messages (topic, payload, qos, retain, created) VALUES (?,?,?,?,?)",
                (topic, payload, qos, int(retain), now),
            ).lastrowid
            if key is not None:
                self._db.execute("INSERT OR REPLACE INTO enqueued VALUES (?, ?)", (key, now))
            self._enforce_bounds()
        assert seq is not None
        return seq

    def enqueued(self, keys: list[str]) -> set[str]:
        """Which of these keys were ever put (within the age limit)."""
        with self._lock:
            found: set[str] = set()
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found |= {
                    k
                    for (k,) in self._db.execute(
                        f"SELECT key FROM enqueued WHERE key IN ({marks})", chunk
                    )
                }
            return found

    def _enforce_bounds(self) -> None:
        cutoff = self._clock() - self._max_age_s
        self._db.execute("DELETE FROM enqueued WHERE created < ?", (cutoff,))
        old = self._db.execute("DELETE FROM messages WHERE created < ?", (cutoff,)).rowcount
        (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        over = max(0, count - self._max_messages)
        if over:
            self._db.execute(
                "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages ORDER BY seq LIMIT ?)",
                (over,),
            )
        if old or over:
            self.dropped += old + over
            _LOGGER.warning(
                "MQTT outbox full: dropped the %d oldest unsent message(s) (limits: %d messages, "
                "%.0f hours); the broker has been unreachable too long",
                old + over,
                self._max_messages,
                self._max_age_s / 3600,
            )

    def after(self, seq: int, limit: int) -> list[OutboxMessage]:
        """Messages with a sequence number above `seq`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM messages WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [OutboxMessage(s, t, bytes(p), q, bool(r)) for s, t, p, q, r in rows]

    def ack(self, seq: int) -> None:
        """The broker has the message: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(count)

    # Discovery bookkeeping: which stations were announced, so removed ones can be withdrawn.

    def announced(self) -> set[str]:
        with self._lock:
            return {k for (k,) in self._db.execute("SELECT key FROM announced")}

    def set_announced(self, keys: set[str]) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM announced")
            self._db.executemany("INSERT INTO announced VALUES (?)", [(k,) for k in sorted(keys)])
