"""The package's layers (README "Where things live"): each module imports only from its own layer or the
layers before it, the model families do not lean on each other, and no imports form a cycle.

Imports are read from the source (every ``import``/``from`` statement, those inside functions included),
so a lazy import cannot hide a dependency."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jaxst"

# In order: a module may import from its own layer and the ones above it in this list.
LAYERS = [
    # the package root, the XLA cache setting, native kernels, the argument checks every layer shares
    ("support", {"jaxst", "compilation_cache", "native", "checks"}),
    ("models", {"models"}),
    ("core", {"pooling", "similarity", "quantization", "sparse", "topk", "search", "maxsim", "losses",
              "cross_encoder_losses", "pipeline"}),
    # the module registry: one file per sentence-transformers module kind, read by io's folder reader and writer
    ("modules", {"modules"}),
    ("io", {"io"}),
    # one encode engine under every family: chunks, length buckets, the token cap, placement, read-back
    ("engine", {"parallel", "engine"}),
    ("base and facades", {"base", "sentence_transformer", "cross_encoder", "sparse_encoder",
                          "multi_vector_encoder", "index", "hard_negatives", "util", "cli", "serve", "corpus",
                          "__main__"}),
    # evaluators and their statistics (the SparseEncoder's over the dense ones): over the families' encode, below
    # training
    ("evaluation", {"evaluation", "sparse_evaluation", "multi_vector_evaluation"}),
    ("training", {"training"}),  # the package: optim, step, gradcache, collation, packing, checkpoints, fitting
]
# the facades: thin files over jaxst.base
FAMILIES = {"sentence_transformer", "cross_encoder", "sparse_encoder", "multi_vector_encoder"}
BELOW_FACADES = {"parallel", "engine", "base"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def unit(module: str) -> str:
    """``jaxst.io.export`` -> ``io``; ``jaxst.base`` -> ``base``; ``jaxst`` -> ``jaxst``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "jaxst"


def layer_of(module: str) -> int:
    for i, (_, units) in enumerate(LAYERS):
        if unit(module) in units:
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it")


def imports(path: Path) -> set[str]:
    """Every jaxst module ``path`` imports (``from jaxst import util`` counts as ``jaxst.util``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "jaxst"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jaxst":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (ROOT / candidate.replace(".", "/")).with_suffix(".py").is_file() or \
                    (ROOT / candidate.replace(".", "/")).is_dir()
                found.add(candidate if is_module else node.module)
    return found


def graph() -> dict[str, set[str]]:
    """module -> the jaxst modules it imports (a name imported from a module counts as that module)."""
    raw = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
    return {m: {d if d in raw else d.rsplit(".", 1)[0] for d in deps} - {m} for m, deps in raw.items()}


def layer_violations(g: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, deps in g.items():
        for dep in deps:
            if layer_of(dep) > layer_of(module):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
            if unit(module) in FAMILIES and unit(dep) in FAMILIES and unit(dep) != unit(module):
                wrong.append(f"{module} imports the facade {dep}")
            if unit(module) in BELOW_FACADES and unit(dep) in FAMILIES:
                wrong.append(f"{module} (below the facades) imports {dep}")
    return wrong


def find_cycle(g: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none."""
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> list[str]:
        state[m] = "open"
        for d in sorted(g.get(m, ())):
            if state.get(d) == "open":
                return path[path.index(d):] + [m, d] if d in path else [m, d]
            if d in g and d not in state and (found := visit(d, path + [m])):
                return found
        state[m] = "done"
        return []

    for m in sorted(g):
        if m not in state and (found := visit(m, [])):
            return found
    return []


def test_every_module_imports_only_from_its_layer_or_above_and_families_not_from_each_other():
    assert not (wrong := layer_violations(graph())), "\n".join(wrong)


def test_every_family_runs_on_the_engine():
    """Each facade batches through jaxst.engine (via BaseModel.encode_chunks), not a loop of its own: it imports
    the engine, and nothing in it plans batches or pads them on its own."""
    g = graph()
    for family in sorted(FAMILIES):
        module = f"jaxst.{family}"
        assert {"jaxst.engine", "jaxst.base"} <= g[module], f"{module} does not import jaxst.engine and jaxst.base"
        source = (PACKAGE / f"{family}.py").read_text(encoding="utf-8")
        assert "encode_chunks(" in source, f"{module} does not run its inputs through BaseModel.encode_chunks"
        for own_loop in ("batch_rows(", "batch_bucket(", "tqdm(", "shard_batch(", "CPU_BATCH_TOKENS"):
            assert own_loop not in source, f"{module} calls {own_loop}: batching belongs to jaxst.engine"


def test_families_build_their_modules_through_the_registry():
    """Each facade takes its module kinds from jaxst.modules (the registry files own the NNX modules, their
    config reading and loading): it imports the registry and defines no NNX module of its own."""
    g = graph()
    for family in sorted(FAMILIES):
        module = f"jaxst.{family}"
        assert any(d == "jaxst.modules" or d.startswith("jaxst.modules.") for d in g[module]), \
            f"{module} does not import the module registry"
        tree = ast.parse((PACKAGE / f"{family}.py").read_text(encoding="utf-8"))
        modules_defined = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                           and any(word in ast.unparse(base) for base in node.bases for word in ("Module", "Encoder"))]
        assert not modules_defined, f"{module} defines NNX modules {modules_defined}: they belong in jaxst.modules"


def test_no_import_cycles():
    assert not (cycle := find_cycle(graph())), " -> ".join(cycle)


def test_the_checks_can_fail():
    """Positive controls: the same checks flag a forbidden import and a cycle when there is one."""
    assert layer_violations({"jaxst.io.export": {"jaxst.sentence_transformer"}})
    assert layer_violations({"jaxst.cross_encoder": {"jaxst.sentence_transformer"}})
    assert layer_violations({"jaxst.base": {"jaxst.cross_encoder"}})
    assert not layer_violations({"jaxst.sentence_transformer": {"jaxst.base", "jaxst.io.export", "jaxst.models"}})
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def private_imports(path: Path) -> list[str]:
    """Names starting with ``_`` that ``path`` imports from another jaxst module (``from jaxst.x import _y``),
    lazy imports inside functions and multi-line imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jaxst":
            found += [f"{node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    """What one module takes from another is public: a shared helper gets a public name in the lowest layer
    that needs it (``jaxst.checks``, ``jaxst.topk``, ...), not an underscore import."""
    wrong = [f"{module_name(p)} imports {name}" for p in sorted(PACKAGE.rglob("*.py")) for name in private_imports(p)]
    assert not wrong, "\n".join(wrong)


def test_private_import_check_can_fail(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from jaxst.search import (\n        hits,\n        _host_matrix,\n    )\n")
    assert private_imports(probe) == ["jaxst.search._host_matrix"]


def test_readme_map_names_every_module():
    """The README's "Where things live" table names every module and package folder of jaxst/."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Where things live", 1)
    assert len(section) == 2, "README has no 'Where things live' section"
    table = section[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w/.]+)`", table))
    missing = []
    for path in sorted(PACKAGE.iterdir()):
        if path.name.startswith("_") or path.name == "__pycache__":
            continue
        rel = f"jaxst/{path.name}" + ("/" if path.is_dir() else "")
        if not any(n == rel or n == path.name or n.rstrip("/") == rel.rstrip("/") for n in named):
            missing.append(rel)
    assert not missing, f"README 'Where things live' does not name: {missing}"
