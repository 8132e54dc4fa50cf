"""The repository explains itself: the README's layout lists every module, the files the docs name
exist, and nothing points at notes that are not in the repository."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mot_lightning"
DOCS = [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# text the repository is made of (the demo corpus, runs and caches under data/ and runs/ are not)
TEXT_DIRS = ["mot_lightning", "configs", "docs", "tests", "benchmarks", ".ci"]


def layout_modules() -> set[str]:
    """Module paths named by the README's layout tree (two spaces of indentation per folder level)."""
    readme = (ROOT / "README.md").read_text()
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


def test_readme_layout_lists_every_module():
    modules = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    listed = layout_modules()
    assert modules - listed == set(), f"modules missing from the README's layout: {sorted(modules - listed)}"
    assert listed - modules == set(), f"the README's layout names modules that do not exist: {sorted(listed - modules)}"


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
    files = [ROOT / "README.md", ROOT / "data" / "README.md", ROOT / "pyproject.toml", ROOT / "Dockerfile"]
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
