"""The manual index: Markdown, text and PDF sections, incremental re-indexing, BM25 and hybrid
ranking, and the `edge-inspector manuals` commands."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_inspector.manuals import ManualIndex
from tests.ollama_server import FakeOllama, fake_embedding
from tests.pdf import write_pdf

DATA = Path(__file__).parent.parent / "data" / "manuals"


@pytest.fixture
def manuals(tmp_path: Path) -> Path:
    folder = tmp_path / "manuals"
    shutil.copytree(DATA, folder)
    write_pdf(
        folder / "welder-w1.pdf",
        [
            [
                "WELDING CELL W-1",
                "1 Porosity",
                "Porosity in the seam comes from a clogged gas",
                "nozzle. Clean the nozzle and check the argon flow (12 l/min).",
            ],
            ["2 Spatter", "Spatter on brackets: lower the wire feed speed, clean the liner."],
        ],
    )
    return folder


def test_sections_and_pages_are_found_in_every_format(manuals: Path, tmp_path: Path) -> None:
    index = ManualIndex(tmp_path / "index.sqlite3")
    report = index.index(manuals)
    assert sorted(report.added) == ["conveyor-cv3.txt", "sp200-press.md", "welder-w1.pdf"]
    assert not report.failed

    top = index.search("scratches along the feed, guide rail")[0]
    assert (top.file, top.section, top.page) == (
        "sp200-press.md",
        "Stamping press SP-200 > Troubleshooting > Scratches",
        None,
    )
    assert "GR-7" in top.excerpt

    spatter = index.search("weld spatter")[0]
    assert (spatter.file, spatter.section, spatter.page) == ("welder-w1.pdf", "2 Spatter", 2)

    oil = index.search("oil spot on the part")[0]
    assert (oil.file, oil.section) == ("conveyor-cv3.txt", "2 SPOTS AND STAINS ON PARTS")
    assert index.search("the of and") == []  # only stop words: no query, no crash
    assert index.search('"; DROP TABLE chunks; --') == index.search("drop table chunks")


def test_reindexing_reads_only_what_changed(manuals: Path, tmp_path: Path) -> None:
    index = ManualIndex(tmp_path / "index.sqlite3")
    index.index(manuals)
    again = index.index(manuals)
    assert (again.added, again.updated, again.removed) == ([], [], [])
    assert len(again.unchanged) == 3

    press = manuals / "sp200-press.md"
    press.write_text(press.read_text() + "\n### Burrs\n\nBurrs mean a dull punch: regrind it.\n")
    (manuals / "conveyor-cv3.txt").unlink()
    third = index.index(manuals)
    assert third.updated == ["sp200-press.md"]
    assert third.removed == ["conveyor-cv3.txt"]
    assert index.search("burrs dull punch")[0].section.endswith("Burrs")
    assert index.search("oil spot drip tray") == []  # the removed file's passages are gone


def test_a_corrupt_pdf_is_reported_and_the_rest_indexed(manuals: Path, tmp_path: Path) -> None:
    (manuals / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ngarbage")
    (manuals / "latin1.txt").write_bytes("Pr\xfcfung".encode("latin-1"))
    report = ManualIndex(tmp_path / "index.sqlite3").index(manuals)
    failed = dict(report.failed)
    assert set(failed) == {"broken.pdf", "latin1.txt"}
    assert "PDF" in failed["broken.pdf"]
    assert "UTF-8" in failed["latin1.txt"]
    assert len(report.added) == 3


def test_hybrid_ranking_finds_a_synonym_bm25_cannot(manuals: Path, tmp_path: Path) -> None:
    index = ManualIndex(tmp_path / "index.sqlite3")

    def embed(texts: object) -> list[list[float]]:
        assert isinstance(texts, list)
        return [fake_embedding(t) for t in texts]

    index.index(manuals, embed=embed, embed_model="all-minilm")
    query = "abrasion marks"
    assert index.search(query) == []  # no shared word
    hits = index.search(
        query, query_vector=fake_embedding(query), embed_model="all-minilm", limit=3
    )
    assert hits and hits[0].section.endswith("Scratches")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_inspector.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_manuals_commands_index_and_search(manuals: Path, tmp_path: Path) -> None:
    db = tmp_path / "cli.sqlite3"
    first = _cli("manuals", "index", str(manuals), "--db", str(db), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "added     welder-w1.pdf" in first.stdout
    assert "passages from 3 file(s)" in first.stdout
    second = _cli("manuals", "index", str(manuals), "--db", str(db), cwd=tmp_path)
    assert "3 unchanged" in second.stdout

    found = _cli("manuals", "search", "dents on the panel", "--db", str(db), cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    first_line = found.stdout.splitlines()[0]
    assert first_line.startswith("1. sp200-press.md — Stamping press SP-200 > Troubleshooting")
    assert "Dents on panels" in first_line

    as_json = _cli("manuals", "search", "spatter", "--db", str(db), "--json", cwd=tmp_path)
    hit = json.loads(as_json.stdout.splitlines()[0])
    assert (hit["file"], hit["page"]) == ("welder-w1.pdf", 2)

    none = _cli("manuals", "search", "hydraulic", "--db", str(db), cwd=tmp_path)
    assert none.returncode == 1 and "no passage matches" in none.stdout
    missing = _cli("manuals", "search", "x", "--db", str(tmp_path / "nope.sqlite3"), cwd=tmp_path)
    assert missing.returncode == 1 and "manuals index" in missing.stderr

    ollama = FakeOllama()
    url = await ollama.start()
    try:
        hybrid_db = tmp_path / "hybrid.sqlite3"
        args = ["--db", str(hybrid_db), "--embed-model", "all-minilm", "--ollama", url]
        # The server runs on this event loop: the command runs on a thread meanwhile.
        indexed = await asyncio.to_thread(
            _cli, "manuals", "index", str(manuals), *args, cwd=tmp_path
        )
        assert indexed.returncode == 0, indexed.stderr
        synonym = await asyncio.to_thread(
            _cli, "manuals", "search", "abrasion marks", *args, cwd=tmp_path
        )
        assert synonym.returncode == 0, synonym.stderr
        assert "Scratches" in synonym.stdout.splitlines()[0]
        assert "/api/embed" in ollama.calls
    finally:
        await ollama.stop()
