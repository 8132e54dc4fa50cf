"""The import picture of ``mot_lightning`` (docs/architecture.md, "Layers"): imports point down only, the
model stands on the bottom layer alone, the module graph has no cycle, and the generation code reads the
data layer through public names only.

Read from the source with ``ast`` (nothing is imported), so every import counts: top-level ones and the
lazy ones inside functions (a lazy upward import is still an upward dependency).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mot_lightning"

# (module prefix, layer), most specific first; a module takes the first prefix it starts with.
LAYERS = [
    ("mot_lightning.checkpoints.cli", 7),  # tools of `mot checkpoint` / `mot export` / `mot generate`
    ("mot_lightning.checkpoints.consolidate", 7),
    ("mot_lightning.checkpoints.export", 7),
    ("mot_lightning.checkpoints.weights", 7),
    ("mot_lightning.modality", 0),
    ("mot_lightning.logs", 0),
    ("mot_lightning.world", 0),
    ("mot_lightning.shards", 0),
    ("mot_lightning.tokenizers", 1),
    ("mot_lightning.data", 2),
    ("mot_lightning.model", 3),
    ("mot_lightning.objectives", 4),
    ("mot_lightning.training", 5),  # what the LightningModule's steps use: losses, clipping, controls
    ("mot_lightning.checkpoints", 5),  # loading, atomic writes, config checks (read by lit_module)
    ("mot_lightning.schedules", 6),
    ("mot_lightning.lit_module", 6),
    ("mot_lightning.sampling", 7),
    ("mot_lightning.generate", 7),
    ("mot_lightning.callbacks", 7),
    ("mot_lightning.eval", 7),
    ("mot_lightning.lit_cli", 7),
    ("mot_lightning.cli", 7),
    ("mot_lightning.run_identity", 7),
    ("mot_lightning.sweep", 7),
    ("mot_lightning.plan", 7),
    ("mot_lightning.compare", 7),
    ("mot_lightning", 0),  # the package's own __init__
]
NAMES = {0: "shards/world/modality", 1: "tokenizers", 2: "data", 3: "model", 4: "objectives",
         5: "training/checkpoints", 6: "lit_module", 7: "callbacks/cli/tools"}
PUBLIC_DATA_READERS = ("mot_lightning.callbacks", "mot_lightning.sampling", "mot_lightning.generate")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    for prefix, level in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return level
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, (ast.Name, ast.Attribute)) and ast.unparse(node.test).endswith("TYPE_CHECKING")


def imports(module: str) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every ``mot_lightning`` import of ``module``
    (``if TYPE_CHECKING:`` blocks left out: they never run)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node)
            for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("mot_lightning")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if not base.startswith("mot_lightning"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub, "", node.lineno) if sub in MODULES else (base, alias.name, node.lineno))
    return out


def edges() -> dict[str, set[str]]:
    """Module -> modules whose code runs when it imports them: the target and the target's parent packages'
    ``__init__``, less the importer's own parent packages (Python has loaded those before the importer)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        own = module.split(".")
        ancestors = {".".join(own[:i]) for i in range(1, len(own))}
        for target, _, _ in imports(module):
            parts = target.split(".")
            implicit = {".".join(parts[:i]) for i in range(1, len(parts))} - ancestors
            graph[module] |= {name for name in implicit | {target} if name in MODULES and name != module}
    return graph


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_imports_point_down_only():
    upward = [f"{m} ({NAMES[layer(m)]}) imports {t} ({NAMES[layer(t)]}), line {line}"
              for m in MODULES for t, _, line in imports(m) if t in MODULES and layer(t) > layer(m)]
    assert not upward, "upward imports:\n  " + "\n  ".join(upward)


def test_model_and_tokenizers_stand_apart():
    """The model imports only the bottom layer (never data, tokenizers or the CLI); tokenizers never import
    the model; data never imports the model or a command."""
    forbidden = {"mot_lightning.model": ("mot_lightning.data", "mot_lightning.tokenizers", "mot_lightning.cli",
                                         "mot_lightning.lit_cli", "mot_lightning.shards", "mot_lightning.world"),
                 "mot_lightning.tokenizers": ("mot_lightning.model",),
                 "mot_lightning.data": ("mot_lightning.model", "mot_lightning.cli", "mot_lightning.lit_cli")}
    bad = [f"{m} imports {t}, line {line}" for m in MODULES for t, _, line in imports(m)
           for src, targets in forbidden.items()
           if (m + ".").startswith(src + ".") and any((t + ".").startswith(x + ".") for x in targets)]
    assert not bad, "\n  ".join(bad)


def test_module_graph_is_acyclic():
    graph, state, path = edges(), {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycle = path[path.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_generation_code_uses_public_data_names():
    """Callbacks, sampling and ``mot generate`` read the data layer through its public names only."""
    private = [f"{m}: {t}.{name or ''}, line {line}" for m in MODULES if m.startswith(PUBLIC_DATA_READERS)
               for t, name, line in imports(m) if t.startswith("mot_lightning.data")
               and (name.startswith("_") or any(p.startswith("_") and p != "__init__" for p in t.split(".")))]
    assert not private, "private data-layer names imported:\n  " + "\n  ".join(private)


def _fails(check, probes: dict[str, str], tmp_path: Path) -> str:
    """Run ``check`` with extra modules ``{name: source}`` added to the package picture; -> its message."""
    for name, source in probes.items():
        MODULES[name] = tmp_path / f"{name}.py"
        MODULES[name].write_text(source)
    try:
        check()
    except AssertionError as e:
        return str(e)
    finally:
        for name in probes:
            del MODULES[name]
    raise AssertionError(f"{check.__name__} passed with {sorted(probes)}")


def test_the_checks_can_fail(tmp_path):
    """A lazy import inside a function counts; each check names what it found."""
    lazy = "def f():\n    from mot_lightning.data.batch import _private\n"
    msg = _fails(test_model_and_tokenizers_stand_apart, {"mot_lightning.model._probe": lazy}, tmp_path)
    assert "mot_lightning.model._probe imports mot_lightning.data.batch, line 2" in msg
    msg = _fails(test_generation_code_uses_public_data_names, {"mot_lightning.callbacks._probe": lazy}, tmp_path)
    assert "mot_lightning.data.batch._private" in msg
    upward = "from mot_lightning.lit_module import MultiModalLM\n"
    msg = _fails(test_imports_point_down_only, {"mot_lightning.data._probe": upward}, tmp_path)
    assert "mot_lightning.data._probe (data) imports mot_lightning.lit_module (lit_module)" in msg
    cycle = {"mot_lightning.world._a": "from mot_lightning.world import _b\n",
             "mot_lightning.world._b": "import mot_lightning.world._a\n"}
    assert "mot_lightning.world._a -> mot_lightning.world._b -> mot_lightning.world._a" in _fails(
        test_module_graph_is_acyclic, cycle, tmp_path)
