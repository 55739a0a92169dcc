"""Every relative link and image in README.md and docs/*.md points at a file or folder that exists.

Links are ``[text](target)`` and ``![alt](target)``, also when text or target wrap onto the next line.
Fenced code blocks, inline code and HTML comments are not rendered as links and are skipped, and so are
targets with a scheme (``https://``, ``mailto:``) and pure ``#anchor`` links; a ``#fragment`` is stripped.
A relative target is resolved against the folder of the file that holds it (``/x`` against the repository).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# A code span: a run of backticks, then the shortest text (within one paragraph) up to a run of the same length.
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)
# [text](target "title"): text may hold one level of brackets (an image inside a link) and line breaks.
LINK = re.compile(
    r"!?\[(?P<text>[^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*)\]"
    r"\(\s*(?P<target><[^<>\n]*>|[^\s()]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)"
)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def blank(text: str) -> str:
    """``text`` with every character but line breaks turned into a space (offsets and lines are kept)."""
    return re.sub(r"[^\n]", " ", text)


def without_code(markdown: str) -> str:
    """The markdown with fenced blocks, inline code and HTML comments blanked out, lines kept in place."""
    lines = markdown.split("\n")
    fence = None  # (character, length) of the open fence
    for i, line in enumerate(lines):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = (opened.group(1)[0], len(opened.group(1)))
            lines[i] = blank(line)
        elif fence is not None:
            char, length = fence
            if re.fullmatch(rf"\s*{re.escape(char)}{{{length},}}\s*", line):
                fence = None
            lines[i] = blank(line)
    text = "\n".join(lines)
    text = HTML_COMMENT.sub(lambda m: blank(m.group(0)), text)
    return CODE_SPAN.sub(lambda m: blank(m.group(0)), text)


def find_links(markdown: str) -> list[tuple[int, str]]:
    """``(line, target)`` of every link and image outside code, in order; line numbers start at 1."""
    text = without_code(markdown)
    found = []

    def scan(start: int, end: int) -> None:
        for match in LINK.finditer(text, start, end):
            scan(match.start("text"), match.end("text"))  # an image inside a link's text
            line = text.count("\n", 0, match.start("target")) + 1
            found.append((line, match.group("target").strip("<>")))

    scan(0, len(text))
    return sorted(found)


def local_path(target: str) -> str | None:
    """The file part of a relative target; None for URLs, mail addresses and pure anchors."""
    if SCHEME.match(target) or target.startswith("#"):
        return None
    return unquote(target.split("#", 1)[0].split("?", 1)[0]) or None


def broken_links(path: Path) -> list[str]:
    """``file:line: target`` for each relative link of ``path`` whose target does not exist."""
    broken = []
    for line, target in find_links(path.read_text(encoding="utf-8")):
        local = local_path(target)
        if local is None:
            continue
        resolved = ROOT / local.lstrip("/") if local.startswith("/") else path.parent / local
        if not resolved.exists():
            broken.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    return broken


def documentation_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_and_image_exists():
    files = documentation_files()
    assert (ROOT / "README.md").is_file() and len(files) > 1, "README.md and docs/*.md are expected"
    broken = [entry for path in files for entry in broken_links(path)]
    assert not broken, f"{len(broken)} broken link(s) in the documentation:\n" + "\n".join(broken)


def test_the_link_finder_follows_markdown_rules():
    sample = "\n".join(
        [
            'See [settings](docs/settings.md) and ![a picture](docs/p.png "title").',  # 1
            "A link whose text [wraps",  # 2
            "onto a second line](docs/wrapped.md#part) and [top](#top).",  # 3
            "Inline `[not a link](code.md)` and ``[nor](this.md)``; [web](https://example.org).",  # 4
            "```bash",  # 5
            "[inside a fence](fenced.md)",  # 6
            "```",  # 7
            "<!-- [commented](comment.md) -->",  # 8
            "[![badge](img/badge.svg)](docs/badge.md) [mail](mailto:a@b.c) [spaced](<docs/a b.md>)",  # 9
            "[target on the next line](",  # 10
            "  docs/next.md)",  # 11
        ]
    )
    assert find_links(sample) == [
        (1, "docs/p.png"),
        (1, "docs/settings.md"),
        (3, "#top"),
        (3, "docs/wrapped.md#part"),
        (4, "https://example.org"),
        (9, "docs/a b.md"),
        (9, "docs/badge.md"),
        (9, "img/badge.svg"),
        (9, "mailto:a@b.c"),
        (11, "docs/next.md"),
    ]
    kept = [local_path(target) for _, target in find_links(sample)]
    assert [k for k in kept if k] == [
        "docs/p.png",
        "docs/settings.md",
        "docs/wrapped.md",
        "docs/a b.md",
        "docs/badge.md",
        "img/badge.svg",
        "docs/next.md",
    ]
