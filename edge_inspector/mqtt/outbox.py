"""A durable outbox: QoS 1 messages wait in SQLite until the broker acknowledges them.

A message is committed before `put_many` returns and deleted only when the broker's PUBACK for it
arrives, so a broker outage or a killed process loses nothing: what was not acknowledged is sent
again, in order, after the next connect. A message may therefore arrive twice; every payload
carries the incident id so subscribers can drop the duplicate. The outbox is bounded by age and
by count, and says so in the log when it drops the oldest messages.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
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


type Queued = tuple[str, bytes, str | None, bool]
"""A message to store: topic, payload, the key it is sent once by (or None), retained."""


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
        # WAL with NORMAL sync survives a killed process. After a power cut the last messages
        # may be gone from here, but incidents are in the store (FULL sync) and the bridge
        # queues again, at start, every incident the outbox never got.
        self._db.execute("PRAGMA synchronous=NORMAL")
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
        (self._count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        self._next_purge = 0.0

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # The connection is in autocommit mode; group statements into one commit.
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put_many(self, messages: list[Queued]) -> None:
        """Store QoS 1 messages (topic, payload, key, retain) in one transaction."""
        now = self._clock()
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO messages (topic, payload, qos, retain, created) VALUES (?,?,1,?,?)",
                [(topic, payload, int(retain), now) for topic, payload, _, retain in messages],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO enqueued VALUES (?, ?)",
                [(key, now) for _, _, key, _ in messages if key is not None],
            )
            self._count += len(messages)
            self._enforce_bounds(now)

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

    def _enforce_bounds(self, now: float) -> None:
        old = 0
        if now >= self._next_purge:  # by age: once a minute is plenty
            self._next_purge = now + 60
            cutoff = now - self._max_age_s
            self._db.execute("DELETE FROM enqueued WHERE created < ?", (cutoff,))
            old = self._db.execute("DELETE FROM messages WHERE created < ?", (cutoff,)).rowcount
            self._count -= old
        over = max(0, self._count - self._max_messages)
        if over:
            self._db.execute(
                "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages ORDER BY seq LIMIT ?)",
                (over,),
            )
            self._count -= over
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

    def ack(self, seqs: list[int]) -> None:
        """The broker has these messages: forget them (one transaction)."""
        if not seqs:
            return
        with self._lock, self._transaction():
            deleted = self._db.executemany(
                "DELETE FROM messages WHERE seq = ?", [(s,) for s in seqs]
            ).rowcount
            self._count -= max(0, deleted)

    def __len__(self) -> int:
        with self._lock:
            return int(self._count)

    # Discovery bookkeeping: which stations were announced, so removed ones can be withdrawn.

    def announced(self) -> set[str]:
        with self._lock:
            return {k for (k,) in self._db.execute("SELECT key FROM announced")}

    def set_announced(self, keys: set[str]) -> None:
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM announced")
            self._db.executemany("INSERT INTO announced VALUES (?)", [(k,) for k in sorted(keys)])
