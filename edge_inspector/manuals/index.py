"""The manual index: SQLite FTS5 with BM25 ranking, optional embeddings for hybrid ranking.

Re-indexing is incremental: a file whose SHA-256 did not change is not read again, a changed
one is replaced, a removed one is dropped. Each call opens its own connection, so the index can
be searched from any thread (the agent runs searches in an executor).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgeInspectorError
from .extract import SUFFIXES, ManualError, chunks_of

__all__ = ["IndexReport", "ManualHit", "ManualIndex"]

_LOGGER = logging.getLogger(__name__)

type Embedder = Callable[[Sequence[str]], Sequence[Sequence[float]]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    indexed_at REAL NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(
    file UNINDEXED, section, page UNINDEXED, body, tokenize = 'porter unicode61'
);
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    vector BLOB NOT NULL
);
"""
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "why",
        "with",
    ]
)
_RRF_K = 60


@dataclass(frozen=True, slots=True)
class ManualHit:
    """One ranked passage: where it is and an excerpt around the matching words."""

    file: str
    section: str
    page: int | None
    excerpt: str
    score: float
    text: str = field(repr=False, default="")

    @property
    def reference(self) -> str:
        page = f", page {self.page}" if self.page is not None else ""
        return f"{self.file} — {self.section}{page}"


@dataclass(slots=True)
class IndexReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    chunks: int = 0


def _vector(blob: bytes) -> list[float]:
    import array

    values = array.array("f")
    values.frombytes(blob)
    return values.tolist()


def _blob(vector: Sequence[float]) -> bytes:
    import array

    return array.array("f", vector).tobytes()


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def fts_query(text: str) -> str | None:
    """A safe FTS5 query from free text: each word quoted, joined with OR."""
    words = [w for w in re.findall(r"\w+", text.lower()) if w not in _STOPWORDS]
    if not words:
        return None
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


class ManualIndex:
    """The index file at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        except (sqlite3.Error, OSError) as exc:
            raise EdgeInspectorError(f"{self.path}: cannot open the manual index: {exc}") from None
        try:
            db.executescript(_SCHEMA)
            yield db
        except sqlite3.Error as exc:
            raise EdgeInspectorError(f"{self.path}: {exc}") from exc
        finally:
            db.close()

    def index(
        self,
        folder: Path,
        *,
        embed: Embedder | None = None,
        embed_model: str | None = None,
    ) -> IndexReport:
        """Index every manual under `folder` that changed since the last run."""
        if not folder.is_dir():
            raise EdgeInspectorError(f"{folder}: no such folder of manuals")
        report = IndexReport()
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        with self._connect() as db:
            known = dict(db.execute("SELECT path, sha256 FROM files").fetchall())
            seen: set[str] = set()
            for path in files:
                name = path.relative_to(folder).as_posix()
                seen.add(name)
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    report.failed.append((name, exc.strerror or str(exc)))
                    continue
                digest = hashlib.sha256(data).hexdigest()
                if known.get(name) == digest and not self._needs_embeddings(
                    db, name, embed_model if embed else None
                ):
                    report.unchanged.append(name)
                    continue
                try:
                    chunks = chunks_of(path)
                except ManualError as exc:
                    report.failed.append((name, str(exc)))
                    _LOGGER.warning("manual %s skipped: %s", name, exc)
                    continue
                vectors: Sequence[Sequence[float]] | None = None
                if embed is not None and chunks:
                    vectors = embed([f"{c.section}\n{c.text}" for c in chunks])
                db.execute("BEGIN")
                self._drop(db, name)
                for i, chunk in enumerate(chunks):
                    cur = db.execute(
                        "INSERT INTO chunks (file, section, page, body) VALUES (?,?,?,?)",
                        (name, chunk.section, chunk.page, chunk.text),
                    )
                    if vectors is not None and embed_model:
                        db.execute(
                            "INSERT INTO embeddings VALUES (?,?,?)",
                            (cur.lastrowid, embed_model, _blob(vectors[i])),
                        )
                db.execute(
                    "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?)",
                    (name, digest, len(data), len(chunks), time.time()),
                )
                db.execute("COMMIT")
                (report.updated if name in known else report.added).append(name)
            for name in sorted(set(known) - seen):
                db.execute("BEGIN")
                self._drop(db, name)
                db.execute("DELETE FROM files WHERE path = ?", (name,))
                db.execute("COMMIT")
                report.removed.append(name)
            report.chunks = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return report

    @staticmethod
    def _needs_embeddings(db: sqlite3.Connection, name: str, model: str | None) -> bool:
        if model is None:
            return False
        row = db.execute(
            "SELECT count(*) FROM chunks c LEFT JOIN embeddings e ON e.id = c.rowid "
            "AND e.model = ? WHERE c.file = ? AND e.id IS NULL",
            (model, name),
        ).fetchone()
        return bool(row[0])

    @staticmethod
    def _drop(db: sqlite3.Connection, name: str) -> None:
        db.execute(
            "DELETE FROM embeddings WHERE id IN (SELECT rowid FROM chunks WHERE file = ?)", (name,)
        )
        db.execute("DELETE FROM chunks WHERE file = ?", (name,))

    def files(self) -> list[tuple[str, int]]:
        """Indexed files and their number of passages."""
        with self._connect() as db:
            return [(str(p), int(n)) for p, n in db.execute("SELECT path, chunks FROM files")]

    def search(
        self,
        query: str,
        *,
        limit: int = 5,
        query_vector: Sequence[float] | None = None,
        embed_model: str | None = None,
    ) -> list[ManualHit]:
        """The best passages for `query`: BM25, fused with embeddings when a vector is given."""
        match = fts_query(query)
        if match is None or not self.path.exists():
            return []
        with self._connect() as db:
            rows = db.execute(
                "SELECT rowid, file, section, page, "
                "snippet(chunks, 3, '', '', ' … ', 48), bm25(chunks, 0.0, 2.0, 0.0, 1.0), body "
                "FROM chunks WHERE chunks MATCH ? ORDER BY 6 LIMIT ?",
                (match, max(limit * 4, 20)),
            ).fetchall()
            hits = {
                r[0]: ManualHit(
                    file=r[1],
                    section=r[2],
                    page=int(r[3]) if r[3] is not None else None,
                    excerpt=" ".join(r[4].split()),
                    score=round(-float(r[5]), 4),
                    text=r[6],
                )
                for r in rows
            }
            ranked = list(hits)
            if query_vector is not None and embed_model:
                ranked = self._fuse(
                    db=db,
                    bm25_order=ranked,
                    hits=hits,
                    query_vector=query_vector,
                    model=embed_model,
                    limit=limit,
                )
        return [hits[i] for i in ranked[:limit]]

    def _fuse(
        self,
        *,
        db: sqlite3.Connection,
        bm25_order: list[int],
        hits: dict[int, ManualHit],
        query_vector: Sequence[float],
        model: str,
        limit: int,
    ) -> list[int]:
        """Reciprocal rank fusion of the BM25 order and the cosine order over all passages."""
        scored = [
            (_cosine(query_vector, _vector(blob)), ident)
            for ident, blob in db.execute(
                "SELECT id, vector FROM embeddings WHERE model = ?", (model,)
            )
        ]
        scored.sort(reverse=True)
        vector_order = [ident for _, ident in scored[: max(limit * 4, 20)]]
        fused: dict[int, float] = {}
        for order in (bm25_order, vector_order):
            for rank, ident in enumerate(order):
                fused[ident] = fused.get(ident, 0.0) + 1.0 / (_RRF_K + rank + 1)
        for ident in vector_order:
            if ident not in hits:
                row = db.execute(
                    "SELECT file, section, page, body FROM chunks WHERE rowid = ?", (ident,)
                ).fetchone()
                if row is None:
                    continue
                body = " ".join(row[3].split())
                hits[ident] = ManualHit(
                    file=row[0],
                    section=row[1],
                    page=int(row[2]) if row[2] is not None else None,
                    excerpt=body[:240] + (" …" if len(body) > 240 else ""),
                    score=0.0,
                    text=row[3],
                )
        order = sorted((i for i in fused if i in hits), key=lambda i: -fused[i])
        for ident in order:
            hits[ident] = ManualHit(
                file=hits[ident].file,
                section=hits[ident].section,
                page=hits[ident].page,
                excerpt=hits[ident].excerpt,
                score=round(fused[ident] * 1000, 4),
                text=hits[ident].text,
            )
        return order
