"""The README stays a short entry point and every link in it and in docs/ resolves.

Pure: no broker. Relative links only (``[text](path)``, ``[text](path#anchor)``, ``[text](#anchor)``);
http(s) links are not fetched. An anchor must name a heading of the target file by GitHub's slug rule:
lower case, punctuation removed, spaces to ``-``, a repeated slug suffixed ``-1``, ``-2``, ...
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
MAX_README_LINES = 300

#: ``[text](target)`` and ``![alt](target)``; the target ends at the first space (a title may follow).
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> str:
    """The text outside fenced code blocks and inline code spans, where links are links."""
    text = FENCE.sub("", text)
    return re.sub(r"(`+)[^`\n]*?\1", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    targets = LINK.findall(without_code(path.read_text()))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.I)]


def test_slug_follows_githubs_rule():
    assert slug("By hand: the tutorial's three terminals") == "by-hand-the-tutorials-three-terminals"
    assert slug("Counting every task under faults: `proj chaos`") == "counting-every-task-under-faults-proj-chaos"
    assert slug("1. The solo pool's ack stall") == "1-the-solo-pools-ack-stall"
    assert slug("On one host: `proj broker start --cluster 3`") == "on-one-host-proj-broker-start---cluster-3"


def test_readme_is_at_most_300_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines, at most {MAX_README_LINES}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading(path):
    # Given every relative link of the file
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        # Then its file exists (relative to the linking file), and its anchor is a heading there
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
            continue
        if anchor:
            if resolved.suffix != ".md":
                broken.append(f"{target}: an anchor into a file that is not markdown")
            elif anchor not in anchors(resolved):
                broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(REPO_ROOT)}")
    assert not broken, f"{path.relative_to(REPO_ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    # Given the files the README links to
    linked = {(REPO_ROOT / t.partition("#")[0]).resolve() for t in relative_links(README) if t.partition("#")[0]}
    # Then each page of docs/ is one of them
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_readme_quick_start_shows_exactly_the_two_commands():
    # Given the README's Quick start section
    text = README.read_text()
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert section, "the README has no '## Quick start' section"
    # When its command blocks are read (shell blocks; comments dropped)
    blocks = re.findall(r"^```(?:sh|bash|shell|console)\n(.*?)^```", section.group(1), flags=re.S | re.M)
    commands = [re.sub(r"\s+#.*$", "", line).strip() for block in blocks for line in block.splitlines() if line.strip()]
    # Then they are exactly ./dev.sh demo and ./dev.sh test
    assert commands == ["./dev.sh demo", "./dev.sh test"], commands
