"""The repository documents itself: citations resolve inside ``docs/`` and no file points outside the repository.

* every ``method.md §X`` / ``data.md §X`` citation (also ranges ``§2.3-2.5`` and lists ``§1, §2``) in a text file of
  the working tree names a heading ``## X.`` / ``### X ...`` of ``docs/method.md`` / ``docs/data.md``;
* every "open choice N" names an item of the Open choices list of ``docs/method.md``;
* every documentation file under ``docs/`` that is mentioned (also bare ``design.md`` / ``contributing.md`` /
  ``method.md`` / ``data.md``) exists;
* no text file refers to a path outside the repository (a shared notes folder, the machine's work folder, a home
  directory).

Files scanned: ``git ls-files --cached --others --exclude-standard`` (tracked and new, not ignored), every file that
decodes as UTF-8 text; this test file itself is left out (it spells the patterns).
"""
from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SELF = Path(__file__).resolve()
BINARY_SUFFIXES = {".png", ".pdf", ".npz", ".npy", ".pt", ".gz", ".nii", ".mat", ".jpg", ".jpeg", ".so", ".zip"}

_SEC = r"\d+(?:\.\d+)*"
_RANGE = rf"{_SEC}(?:[ \t]*[-–][ \t]*{_SEC})?"
# "method.md §1.4", "``docs/data.md`` §1, §2", "method.md §2.3-2.5, §8.2", a line break allowed after the file name
CITATION = re.compile(
    rf"\b(?P<doc>method|data)\.md[`'\")\]*]*(?:[ \t]*|[ \t]*\n[ \t#*>\"]*)"
    rf"(?P<refs>§[ \t]*{_RANGE}(?:[ \t]*,[ \t]*§[ \t]*{_RANGE})*)"
)
OPEN_CHOICE = re.compile(r"\bopen choices?[ \t]+(?P<refs>\d+(?:[ \t]*[-–][ \t]*\d+)?(?:[ \t]*,[ \t]*\d+)*)",
                         re.IGNORECASE)
DOC_FILE = re.compile(r"(?:\bdocs/(?P<path>[\w.-]+\.md)\b)|(?<![\w/.-])(?P<bare>method|data|design|contributing)\.md\b")
HEADING = re.compile(r"^#{2,6}[ \t]+(?P<num>\d+(?:\.\d+)*)\.?[ \t]", re.MULTILINE)
OUTSIDE = {
    "a shared folder next to the repository": re.compile(r"\.\./shared\b"),
    "the team's shared notes": re.compile(r"\bshared/docs\b"),
    "the machine's work folder": re.compile(r"(?<![\w.])/work/"),
    "a home directory": re.compile(r"(?<![\w.])(?:/home/[\w.-]+|/Users/[\w.-]+|/root/|[A-Za-z]:\\Users\\)"),
}


# ------------------------------------------------------------------------------------------------------ helpers
@lru_cache(maxsize=1)
def text_files() -> tuple[tuple[str, str], ...]:
    """(path relative to the root, text) of every non-ignored UTF-8 text file of the working tree but this one."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:  # not a git checkout (e.g. an sdist): nothing to check
        pytest.skip(f"git ls-files failed here ({e})")
    files = []
    for rel in sorted({p for p in out.decode().split("\0") if p}):
        path = ROOT / rel
        if path.suffix.lower() in BINARY_SUFFIXES or not path.is_file() or path.resolve() == SELF:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if path.suffix in (".json", ".ipynb"):
            text = text.replace("\\u00a7", "§")  # JSON writers may escape the section sign
        files.append((rel, text))
    return tuple(files)


@lru_cache(maxsize=None)
def headings(doc: str) -> frozenset[str]:
    """Section numbers of the numbered headings of docs/<doc>.md ("## 1. Title" -> "1", "### 1.2 Title" -> "1.2")."""
    path = DOCS / f"{doc}.md"
    if not path.is_file():
        return frozenset()
    return frozenset(m["num"] for m in HEADING.finditer(path.read_text(encoding="utf-8")))


def open_choices() -> set[int]:
    """Item numbers of the "## Open choices" list of docs/method.md."""
    text = (DOCS / "method.md").read_text(encoding="utf-8") if (DOCS / "method.md").is_file() else ""
    m = re.search(r"^## Open choices[^\n]*\n(?P<body>.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    return {int(n) for n in re.findall(r"^(\d+)\.[ \t]", m["body"], re.MULTILINE)} if m else set()


def expand(ref: str) -> list[str]:
    """"2.3-2.5" -> ["2.3", "2.4", "2.5"]; "1-3" -> ["1", "2", "3"]; endpoints only across different parents."""
    parts = [p.strip() for p in re.split(r"[-–]", ref)]
    if len(parts) == 1:
        return parts
    lo, hi = (p.split(".") for p in parts)
    if len(lo) == len(hi) and lo[:-1] == hi[:-1] and int(lo[-1]) <= int(hi[-1]):
        return [".".join(lo[:-1] + [str(i)]) for i in range(int(lo[-1]), int(hi[-1]) + 1)]
    return parts


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


# -------------------------------------------------------------------------------------------------------- tests
def test_docs_have_numbered_sections() -> None:
    for doc in ("method", "data"):
        assert (DOCS / f"{doc}.md").is_file(), f"docs/{doc}.md is missing"
        assert len(headings(doc)) >= 10, f"docs/{doc}.md has too few numbered headings: {sorted(headings(doc))}"
    assert set(range(1, 27)) <= open_choices(), "docs/method.md lacks some of the open choices 1-26"


def test_every_cited_section_exists() -> None:
    failures, n = [], 0
    for rel, text in text_files():
        for m in CITATION.finditer(text):
            refs = re.findall(_RANGE, m["refs"])
            for ref in refs:
                n += 1
                missing = [s for s in expand(ref) if s not in headings(m["doc"])]
                if missing:
                    cited = " ".join(m.group(0).split())
                    failures.append(f"{rel}:{line_of(text, m.start())}: '{cited}' -> docs/{m['doc']}.md has no "
                                    f"section {', '.join('§' + s for s in missing)}")
    assert n > 50, f"found only {n} citations: is the citation pattern still right?"
    assert not failures, "citations of sections that do not exist:\n" + "\n".join(failures)


def test_every_cited_open_choice_exists() -> None:
    known, failures = open_choices(), []
    for rel, text in text_files():
        for m in OPEN_CHOICE.finditer(text):
            for ref in re.split(r"[ \t]*,[ \t]*", m["refs"]):
                numbers = [int(s) for s in expand(ref)]
                missing = [k for k in numbers if k not in known]
                if missing:
                    failures.append(f"{rel}:{line_of(text, m.start())}: '{m.group(0)}' -> docs/method.md has no "
                                    f"open choice {', '.join(map(str, missing))}")
    assert not failures, "citations of open choices that do not exist:\n" + "\n".join(failures)


def test_every_mentioned_docs_file_exists() -> None:
    failures = []
    for rel, text in text_files():
        for m in DOC_FILE.finditer(text):
            name = m["path"] or f"{m['bare']}.md"
            if not (DOCS / name).is_file():
                failures.append(f"{rel}:{line_of(text, m.start())}: '{m.group(0)}' -> no file docs/{name}")
    assert not failures, "mentions of documentation files that are not in docs/:\n" + "\n".join(failures)


def test_no_file_refers_outside_the_repository() -> None:
    hits: dict[tuple[str, str], list[int]] = defaultdict(list)
    example: dict[tuple[str, str], str] = {}
    for rel, text in text_files():
        for what, pattern in OUTSIDE.items():
            for m in pattern.finditer(text):
                key = (rel, what)
                hits[key].append(line_of(text, m.start()))
                if key not in example:
                    line = text.splitlines()[line_of(text, m.start()) - 1].strip()
                    example[key] = line if len(line) <= 120 else line[:117] + "..."
    failures = [f"{rel}: {what} on line(s) {', '.join(map(str, lines))}, e.g. {example[(rel, what)]!r}"
                for (rel, what), lines in sorted(hits.items())]
    assert not failures, ("files that refer to paths outside the repository (make them relative to the repository "
                          "root or drop them):\n" + "\n".join(failures))
