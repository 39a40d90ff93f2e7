"""Every design reference in the repository resolves inside it: ``docs/design.md#anchor`` names a heading of
``docs/design.md``, and nothing points at documents a clone does not contain."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("mql_lightning", "configs", "tests", "docs", "benchmarks", "tools")
_ANCHOR = re.compile(r"docs/design\.md#([A-Za-z0-9_-]+)")
# The founding documents outside the repository (the design card, the reference notes, the issue tracker).
_OUTSIDE = re.compile(r"DESIGN\.md|reference/original-mql\.md|\bdecision \d+\b|\bissue \d+\b")


def _text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in SOURCES:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".yaml", ".md"} and p.is_file()]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_design_anchor_names_a_heading_of_the_design_doc() -> None:
    headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / "design.md").read_text(), flags=re.M)
    anchors = {_slug(h) for h in headings}
    missing = {
        f"{path.relative_to(ROOT)}: #{anchor}"
        for path in _text_files()
        for anchor in _ANCHOR.findall(path.read_text(errors="replace"))
        if anchor not in anchors
    }
    assert not missing, sorted(missing)


def test_the_package_and_configs_point_at_no_document_outside_the_repository() -> None:
    offending = {
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in _text_files()
        if path.parts[len(ROOT.parts)] in {"mql_lightning", "configs"}
        for match in _OUTSIDE.finditer(path.read_text(errors="replace"))
    }
    assert not offending, sorted(offending)
