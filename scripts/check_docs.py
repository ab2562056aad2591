#!/usr/bin/env python3
"""Checks the documentation: README.md, BENCHMARKS.md and docs/*.md (standard library only).

- Every relative link, `[text](path)`, `[text](path#anchor)`, `[text](#anchor)`, an image
  `![alt](path)` or a reference definition `[name]: path`, points at a file or folder of this
  repository (never outside it), and every anchor into a Markdown file is one of its headings,
  slugged as GitHub slugs them (or an explicit `<a id=…>`/`<a name=…>`). Links inside code are
  not links. External links (`https:`, `mailto:`, …) are not fetched.
- docs/api.md's route table has a row for every operation of `infra/openapi.yaml` and every
  HTTP route of `infra/template.yaml`, and no other.
- The README's two commands are the ones the project uses: its first code block of
  `./scripts/…` commands holds exactly the command `.ci/run` runs (the test command) and
  `./scripts/dev`, which exists, is executable and serves the stack (`stack.py serve`).

Before it reads the real files it checks itself on planted mistakes, so a checker that stopped
finding them fails too. Prints each problem as `file:line: …` and exits 1 if there is any.
Run by `./scripts/test` (its "docs" phase); alone: `python3 scripts/check_docs.py`.
"""

import os
import pathlib
import re
import sys
import tempfile
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?(?:\s+[\"'(].*?[\"')])?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def doc_files(root: pathlib.Path) -> list[pathlib.Path]:
    files = [root / "README.md", root / "BENCHMARKS.md"] + sorted((root / "docs").glob("*.md"))
    return [f for f in files if f.is_file()]


def prose_lines(text: str):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence):
                fence = None
            continue
        if fence is None:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text as rendered, lower-cased, without punctuation
    (but `-` and `_`), spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: pathlib.Path, cache: dict) -> set[str]:
    if path not in cache:
        seen: dict[str, int] = {}
        found: set[str] = set()
        previous = ""
        for _, line in prose_lines(path.read_text(encoding="utf-8")):
            found.update(a.lower() for a in HTML_ANCHOR.findall(line))
            m = ATX.match(line)
            title = m.group(2) if m else None
            if title is None and SETEXT.match(line) and previous.strip() and not previous.lstrip().startswith(("|", "-", "*", ">")):
                title = previous.strip()
            if title is not None:
                base = slug(title)
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
            previous = line
        cache[path] = found
    return cache[path]


def links(text: str):
    """(line number, target) of every link outside code."""
    for n, line in prose_lines(text):
        bare = CODE_SPAN.sub("", line)
        for m in INLINE_LINK.finditer(bare):
            yield n, m.group(1)
        m = REF_DEF.match(bare)
        if m:
            yield n, m.group(1)


def check_links(root: pathlib.Path, files: list[pathlib.Path]) -> list[str]:
    problems = []
    cache: dict = {}
    for f in files:
        name = f.relative_to(root).as_posix()
        for n, target in links(f.read_text(encoding="utf-8")):
            if not target or SCHEME.match(target):
                continue
            path, _, anchor = target.partition("#")
            path = urllib.parse.unquote(path)
            if path.startswith("/"):
                dest = (root / path.lstrip("/")).resolve()
            elif path:
                dest = (f.parent / path).resolve()
            else:
                dest = f.resolve()
            where = f"{name}:{n}: link `{target}`"
            if dest != root and root not in dest.parents:
                problems.append(f"{where} points outside the repository")
                continue
            if not dest.exists():
                problems.append(f"{where} points at nothing ({dest.relative_to(root).as_posix()} does not exist)")
                continue
            if anchor and dest.suffix == ".md" and dest.is_file():
                if urllib.parse.unquote(anchor).lower() not in anchors(dest, cache):
                    problems.append(f"{where}: no heading `#{anchor}` in {dest.relative_to(root).as_posix()}")
    return problems


def commands_of(block: list[str]) -> list[str]:
    return [line.split()[0] for line in block if line.strip() and not line.lstrip().startswith("#")]


def check_commands(root: pathlib.Path) -> list[str]:
    """The README's two commands: the one `.ci/run` runs, and the serve script."""
    problems = []
    ci = root / ".ci" / "run"
    if not ci.is_file():
        return [".ci/run: missing (it names the test command)"]
    runs = [line.split()[1] for line in ci.read_text().splitlines() if line.strip().startswith("exec ")]
    if len(runs) != 1:
        return [".ci/run: expected one `exec ./scripts/…` line naming the test command"]
    test_cmd = runs[0]
    serve_cmd = "./scripts/dev"
    for cmd, does in ((test_cmd, "stack.py test"), (serve_cmd, "stack.py serve")):
        script = root / cmd
        if not script.is_file() or not os.access(script, os.X_OK):
            problems.append(f"{cmd}: missing or not executable")
        elif does not in script.read_text():
            problems.append(f"{cmd}: does not run `{does}`")
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8").splitlines()
    block, inside, start = [], False, 0
    for n, line in enumerate(text, 1):
        if FENCE.match(line):
            if inside and any(c.startswith("./scripts/") for c in commands_of(block)):
                break
            inside, block, start = not inside, [], n
            continue
        if inside:
            block.append(line)
    else:
        block = []
    found = commands_of(block)
    if sorted(found) != sorted([serve_cmd, test_cmd]):
        problems.append(f"README.md:{start}: the two commands are {found or 'missing'}; expected `{serve_cmd}` "
                        f"(serves the stack) and `{test_cmd}` (what .ci/run runs)")
    return problems


def routes_documented(root: pathlib.Path) -> list[str]:
    """Every operation of infra/openapi.yaml and every HTTP route of infra/template.yaml is a row
    of docs/api.md's route table, and the table names no other."""
    norm = lambda method, path: f"{method.upper()} {path.replace('{account_id}', '{id}')}"
    api, template, table = set(), set(), set()
    path = None
    for line in (root / "infra" / "openapi.yaml").read_text().splitlines():
        m = re.match(r"^  (/\S*):\s*$", line)
        path = m.group(1) if m else (path if line.startswith("    ") or not line.strip() else None)
        m = re.match(r"^    (get|put|post|delete|patch):", line)
        if m and path:
            api.add(norm(m.group(1), path))
    text = (root / "infra" / "template.yaml").read_text()
    for p, method in re.findall(r"\n\s+Path: (\S+)\s*\n\s+Method: (\S+)", text):
        template.add(norm(method, p))
    for n, line in prose_lines((root / "docs" / "api.md").read_text(encoding="utf-8")):
        m = re.match(r"^\| `(GET|PUT|POST|DELETE|PATCH) (/[^`?\s]*)", line)
        if m:
            table.add(norm(m.group(1), m.group(2)))
    problems = [f"docs/api.md: route table lacks `{r}` ({src})"
                for src, routes in (("infra/openapi.yaml", api), ("infra/template.yaml", template))
                for r in sorted(routes - table)]
    problems += [f"docs/api.md: route table lists `{r}`, which infra/openapi.yaml does not have" for r in sorted(table - api)]
    return problems


def self_test() -> list[str]:
    """The checker on planted mistakes: each must be found, and a clean page must pass."""
    with tempfile.TemporaryDirectory() as tmp:
        outer = pathlib.Path(tmp).resolve()
        root = outer / "repo"
        (root / "docs").mkdir(parents=True)
        (outer / "elsewhere.md").write_text("# Elsewhere\n")
        (root / "docs" / "a.md").write_text(
            "# Page A\n\n## The `shared/src` layout, by capability\n\n## Twice\n\n## Twice\n\n"
            "Good: [b](b.md#a-heading), [self](#twice-1), [up](../README.md), [code](`x`)\n"
            "`[not a link](nowhere.md)`\n\n```sh\n[nor this](nowhere.md)\n```\n")
        (root / "docs" / "b.md").write_text("# B\n\n## A heading\n\n[layout](a.md#the-sharedsrc-layout-by-capability)\n")
        (root / "README.md").write_text("# R\n\n[a](docs/a.md)\n")
        if check_links(root, doc_files(root)):
            return [f"self-test: a clean page was refused: {check_links(root, doc_files(root))}"]
        (root / "docs" / "c.md").write_text(
            "# C\n\n[gone](missing.md)\n[bad anchor](a.md#no-such-heading)\n[outside](../../elsewhere.md)\n"
            "[self](#nowhere)\n[ref]: ./also-missing.txt\n")
        found = check_links(root, doc_files(root))
        wanted = ["missing.md", "#no-such-heading", "outside the repository", "#nowhere", "also-missing.txt"]
        missed = [w for w in wanted if not any(w in p for p in found)]
        if missed or len(found) != len(wanted):
            return [f"self-test: planted mistakes {missed} not found (found {found})"]
    return []


def main() -> int:
    problems = self_test()
    if not problems:
        problems = check_links(ROOT, doc_files(ROOT)) + check_commands(ROOT) + routes_documented(ROOT)
    for p in problems:
        print(p, file=sys.stderr)
    files = ", ".join(f.relative_to(ROOT).as_posix() for f in doc_files(ROOT))
    print(f"check_docs: {len(problems)} problem(s) in {files}", file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
