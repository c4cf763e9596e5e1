"""The documentation holds together: every relative link in README.md, docs/*.md and lab/*.md
names a file that exists, every #anchor names a heading of its target (GitHub's slugs), every
document is reachable from the README, the README stays short, and the licence is there."""
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "lab").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)


def prose(text):
    """The text without fenced code blocks (whose brackets are not links)."""
    return FENCE.sub("", text)


def links(text):
    """Link targets of [x](path) and ![x](path) outside code: a link that starts inside a code
    span is not one, while a code span inside a link's text (as in [`eval.py`](eval.py)) is."""
    body = prose(text)
    code = [m.span() for m in INLINE_CODE.finditer(body)]
    return [m.group(1) for m in LINK.finditer(body)
            if not any(a <= m.start() < b for a, b in code)]


def slug(heading):
    """GitHub's anchor for a heading: the rendered text lower-cased, punctuation other than
    '-' and '_' dropped, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)     # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path):
    """Every anchor a markdown file defines, duplicates numbered as GitHub does (x, x-1, x-2)."""
    text = prose(path.read_text(encoding="utf-8"))
    seen, out = {}, set(HTML_ANCHOR.findall(text))
    for m in HEADING.finditer(text):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links():
    for doc in DOCS:
        for target in links(doc.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):         # http:, https:, mailto:
                continue
            yield doc, target


CASES = list(relative_links())


def test_helpers():
    assert slug("E1: power on web, 12 seeds") == "e1-power-on-web-12-seeds"
    assert slug("The paper's claims, tested here") == "the-papers-claims-tested-here"
    assert slug("Evaluation (`eval.py`)") == "evaluation-evalpy"
    assert slug("Stage-1 NCA accuracy and the lookup baseline") == \
        "stage-1-nca-accuracy-and-the-lookup-baseline"
    text = "[a](x.md) `[b](not.md)` [`c`](y.py#z) ![d](p.png)\n```\n[e](code.md)\n```\n"
    assert links(text) == ["x.md", "y.py#z", "p.png"]


def test_documents_found():
    assert len(DOCS) >= 3 and CASES, "no documents or no links found"


@pytest.mark.parametrize("doc,target", CASES,
                         ids=[f"{d.relative_to(ROOT)}->{t}" for d, t in CASES])
def test_link_resolves(doc, target):
    path, _, anchor = target.partition("#")
    dest = (doc.parent / path).resolve() if path else doc
    where = f"{doc.relative_to(ROOT)} links to {target}"
    assert dest.exists(), f"{where}: {path} does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), f"{where}: no heading with anchor #{anchor} in {dest.name}"


def test_every_document_is_reachable_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for t in links(README.read_text(encoding="utf-8")) if t.partition("#")[0]}
    missing = [str(d.relative_to(ROOT)) for d in DOCS[1:] if d.resolve() not in linked]
    assert not missing, f"not linked from README.md: {missing}"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 300, f"README.md has {n} lines; at most 300 (details belong in docs/ or lab/)"


def test_licence():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "Permission is hereby granted" in text
