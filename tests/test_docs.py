"""The repository explains itself: the README is a front page whose commands are the ones CI runs, the
layout in docs/architecture.md lists every module, the files and anchors the docs link exist, and nothing
points at notes that are not in the repository or at an issue tracker a reader cannot open."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mot_lightning"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# text the repository is made of (the demo corpus, runs and caches under data/ and runs/ are not)
TEXT_DIRS = ["mot_lightning", "configs", "docs", "tests", "benchmarks", ".ci"]


def layout_modules() -> set[str]:
    """Module paths named by the layout tree of docs/architecture.md (two spaces of indentation per folder
    level)."""
    readme = (ROOT / "docs" / "architecture.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```\n", 2)[1]
    folders: list[str] = []
    found = set()
    for line in block.splitlines():
        name = line.strip().split(" ")[0]
        depth = (len(line) - len(line.lstrip(" "))) // 2
        if not name or name.startswith("#"):
            continue
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        elif name.endswith(".py"):
            found.add("/".join([*folders, name]))
    return found


def test_layout_lists_every_module():
    modules = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    listed = layout_modules()
    assert not modules - listed, f"modules missing from docs/architecture.md's layout: {sorted(modules - listed)}"
    assert not listed - modules, f"docs/architecture.md's layout names missing modules: {sorted(listed - modules)}"


def test_files_named_in_the_docs_exist():
    """Every ``path/file.py`` / ``path/file.md`` in backticks or a Markdown link of the docs exists, from the
    repository root or from the package (``model/untied.py``)."""
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        names = re.findall(r"`([\w./-]+/[\w.-]+\.(?:py|md|yaml|json))`", text)
        names += [m for m in re.findall(r"\]\(([^)#\s]+)", text) if not m.startswith("http")]
        for name in names:
            if "<" in name or "*" in name or name.startswith("./"):  # placeholders, examples
                continue
            candidates = [doc.parent / name, ROOT / name, PACKAGE / name]
            if not any(c.exists() for c in candidates):
                missing.append(f"{doc.relative_to(ROOT)}: {name}")
    assert not missing, "files named in the docs that do not exist:\n  " + "\n  ".join(missing)


def test_nothing_cites_notes_outside_the_repository():
    notes = [f"{n}.md" for n in ("PAPER", "DESIGN", "CONVENTIONS", "MISSION")]  # spelled apart: not a citation
    hits = []
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "Dockerfile"]
    for folder in TEXT_DIRS:
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".sbatch", ""}]
    for path in files:
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        hits += [f"{path.relative_to(ROOT)}: {note}" for note in notes
                 if note in text and not (ROOT / note).exists()]
    assert not hits, ("references to notes that are not in the repository (point them at docs/):\n  "
                      + "\n  ".join(hits))


def readme_commands() -> list[str]:
    """The command lines of the README's quickstart block (``pip install ... && ...``)."""
    readme = (ROOT / "README.md").read_text()
    return [line.strip() for line in readme.splitlines() if line.startswith("pip install -e")]


def test_readme_is_a_front_page_whose_test_command_is_ci():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "README.md is a front page: move the manual to docs/"
    install_run, install_test = readme_commands()
    assert "mot fit --config configs/" in install_run
    config = install_run.split("--config ", 1)[1].split()[0]
    assert (ROOT / config).exists(), config
    assert "pytest" in install_test
    assert install_test in (ROOT / ".ci" / "run").read_text(), "CI must run exactly the README's test command"


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_anchors_in_doc_links_exist():
    missing = []
    for doc in DOCS:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", doc.read_text()):
            page = doc if not target else (doc.parent / target)
            if not page.exists() or page.suffix != ".md":
                continue
            fence = False
            anchors = set()
            for line in page.read_text().splitlines():
                fence ^= line.startswith("```")
                if not fence and line.startswith("#"):
                    anchors.add(slug(line.lstrip("#")))
            if anchor not in anchors:
                missing.append(f"{doc.relative_to(ROOT)}: {target}#{anchor}")
    assert not missing, "links to headings that do not exist:\n  " + "\n  ".join(missing)


def test_no_issue_numbers_a_reader_cannot_open():
    pattern = re.compile(r"\bissues? [0-9]+|the issue['\u2019]s ", re.IGNORECASE)
    hits = []
    for folder in TEXT_DIRS + ["."]:
        paths = (ROOT / folder).rglob("*") if folder != "." else ROOT.glob("*")
        for path in paths:
            if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".sh"} and "__pycache__" not in path.parts:
                hits += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in pattern.finditer(path.read_text())]
    assert not hits, "say what the code does instead of citing the tracker:\n  " + "\n  ".join(hits[:20])
