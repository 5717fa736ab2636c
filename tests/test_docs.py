"""The documentation holds together: every relative link and image in README.md, README.zh-CN.md and docs/*.md
points at a file that exists, and every `#anchor` at a heading of its page (GitHub's anchor rules); the front
page stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", REPO / "README.zh-CN.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(page: Path) -> str:
    """The page without its fenced code blocks (a `[x](y)` in code is not a link)."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (not '-' or '_'), spaces to '-'."""
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(page), flags=re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page)) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor in {resolved.name}")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_front_page() -> None:
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(REPO / "README.md")}
    assert {p.resolve() for p in (REPO / "docs").glob("*.md")} <= linked


def test_the_front_page_fits_on_two_screens() -> None:
    """What a newcomer reads first: what it is, the two commands, a picture, the reading order, the tutorial,
    results, and links (about 100 lines: two screens of a laptop browser)."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 100
    headings = re.findall(r"^## (.+)$", (REPO / "README.md").read_text(), flags=re.M)
    assert headings == ["Two commands", "What you get", "Read the code in this order", "Learn it: the tutorial",
                        "Results", "More"]  # fmt: skip


def test_a_link_checker_that_finds_broken_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [bad](#nowhere)\n```\n[in code](x.md)\n```\n")
    assert links(page) == ["#title", "missing.md", "#nowhere"]
    assert anchors(page) == {"title"}
