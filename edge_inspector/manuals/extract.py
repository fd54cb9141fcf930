"""Cut manuals into sections a search can point to: file, section heading, page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeInspectorError

__all__ = ["SUFFIXES", "Chunk", "ManualError", "chunks_of"]

SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".pdf"})
_MAX_CHARS = 1500
_HEADING_MD = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_HEADING_TEXT = re.compile(r"^(\d+(\.\d+)*\.?\s+\S.*|[A-Z][A-Z0-9 ,/&()-]{2,})$")


class ManualError(EdgeInspectorError):
    """A manual could not be read (corrupt or encrypted PDF, not UTF-8 text)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    section: str
    page: int | None
    text: str


def _split(text: str) -> Iterator[str]:
    """Paragraph-aligned pieces of at most about _MAX_CHARS characters."""
    piece: list[str] = []
    size = 0
    for raw in re.split(r"\n\s*\n", text):
        para = raw.strip()
        if not para:
            continue
        while len(para) > _MAX_CHARS:  # one huge paragraph: cut at a sentence or a space
            cut = max(para.rfind(". ", 0, _MAX_CHARS), para.rfind(" ", 0, _MAX_CHARS))
            cut = cut + 1 if cut > _MAX_CHARS // 2 else _MAX_CHARS
            if piece:
                yield "\n\n".join(piece)
                piece, size = [], 0
            yield para[:cut].strip()
            para = para[cut:].strip()
        if size + len(para) > _MAX_CHARS and piece:
            yield "\n\n".join(piece)
            piece, size = [], 0
        piece.append(para)
        size += len(para) + 2
    if piece:
        yield "\n\n".join(piece)


def _markdown(text: str, title: str) -> Iterator[Chunk]:
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    in_code = False

    def emit() -> Iterator[Chunk]:
        section = " > ".join(h for _, h in stack) or title
        for piece in _split("\n".join(body)):
            yield Chunk(section, None, piece)

    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING_MD.match(line)
        if match:
            yield from emit()
            body = []
            level = len(match.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, match.group(2).strip()))
        else:
            body.append(line)
    yield from emit()


def _plain(
    text: str,
    title: str,
    page: int | None = None,
    section: str | None = None,
    *,
    needs_blank: bool = True,
) -> Iterator[Chunk]:
    """Text with headings guessed: a short numbered or upper-case line standing alone (PDF
    text has no blank lines, so there a short such line of a few words is enough)."""
    current = section or title
    body: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        alone = (
            (i == 0 or not lines[i - 1].strip())
            or (i + 1 < len(lines) and not lines[i + 1].strip())
            or (not needs_blank and len(stripped.split()) <= 6)
        )
        if (
            stripped
            and len(stripped) <= 80
            and not stripped.endswith((".", ",", ";"))
            and alone
            and _HEADING_TEXT.match(stripped)
        ):
            for piece in _split("\n".join(body)):
                yield Chunk(current, page, piece)
            body = []
            current = stripped
        else:
            body.append(line)
    for piece in _split("\n".join(body)):
        yield Chunk(current, page, piece)


def _pdf(path: Path, title: str) -> Iterator[Chunk]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise ManualError(f"{path.name}: the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ManualError(f"{path.name}: not a readable PDF: {exc}") from None
    section: str | None = None
    for number, text in enumerate(pages, start=1):
        for chunk in _plain(text, title, page=number, section=section, needs_blank=False):
            section = chunk.section
            yield chunk


def chunks_of(path: Path) -> list[Chunk]:
    """The searchable pieces of one manual; raises ManualError for an unreadable file."""
    title = path.stem.replace("_", " ").replace("-", " ")
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return list(_pdf(path, title))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ManualError(f"{path.name}: not UTF-8 text") from None
    if suffix in (".md", ".markdown"):
        return list(_markdown(text, title))
    return list(_plain(text, title))
