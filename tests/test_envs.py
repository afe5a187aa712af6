"""Offline checks of the conda envs: valid YAML, parseable conda and pip specs, every `conda:` directive points at
an existing file, exact pins agree with pyproject.toml, and each rule's env has the packages its script imports
(conda is not available on our machines)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from rattler import MatchSpec

from conftest import ROOT

ENVS = sorted((ROOT / "envs").glob("*.yaml"))
CONDA_TO_PYPI = {"pytorch": "torch", "huggingface_hub": "huggingface-hub", "pyyaml": "pyyaml"}


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for line in deps:
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[req.name.lower().replace("_", "-")] = exact[0]
    return pins


def conda_specs(env: dict) -> list[MatchSpec]:
    return [MatchSpec(dep) for dep in env["dependencies"] if isinstance(dep, str)]


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_file_parses(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"][0] == "conda-forge" and "nodefaults" in env["channels"]
    specs = conda_specs(env)
    assert any(s.name.normalized == "python" for s in specs)
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                if not line.startswith("-"):
                    Requirement(line)
    deploy = path.with_suffix(".post-deploy.sh")
    assert deploy.exists(), f"{path.name}: the library is installed by {deploy.name}"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_pyproject(path):
    pins = pyproject_pins()
    for spec in conda_specs(yaml.safe_load(path.read_text())):
        name = CONDA_TO_PYPI.get(spec.name.normalized, spec.name.normalized).replace("_", "-")
        version = (spec.version or "").removesuffix(".*")
        if name in pins and version and version[0].isdigit():
            assert version == pins[name], f"{path.name}: {name} {version} != pyproject {pins[name]}"
        if name in pins:
            assert version, f"{path.name}: {name} is pinned in pyproject ({pins[name]}) but not here"


def test_every_conda_directive_points_at_an_existing_env():
    directives = []
    for rules in (ROOT / "workflow/rules").glob("*.smk"):
        for match in re.finditer(r'conda:\s*\n\s*"([^"]+)"', rules.read_text()):
            directives.append((rules, match.group(1)))
    assert directives
    for rules, target in directives:
        assert (rules.parent / target).resolve().exists(), f"{rules.name}: conda env {target} does not exist"
    used = {(rules.parent / target).resolve() for rules, target in directives}
    assert used == {p.resolve() for p in ENVS}, "every env file is used by some rule"


def test_bad_conda_spec_is_rejected():
    with pytest.raises(Exception):
        MatchSpec("pytorch ==!2")


# Import names whose conda package has another name, and packages that come with one the env lists.
IMPORT_TO_CONDA = {"sklearn": "scikit-learn", "yaml": "pyyaml", "torch": "pytorch"}
COMES_WITH = {"patsy": "statsmodels", "threadpoolctl": "scikit-learn"}
LIBRARY = ROOT / "src/dropnoise"


def _imports(nodes) -> set[str]:
    """Top-level names imported anywhere in `nodes`: third-party packages, and library modules as `.name`."""
    names = set()
    for node in (n for tree in nodes for n in ast.walk(tree)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.level or node.module.split(".")[0] == "dropnoise"):
            inner = node.module.removeprefix("dropnoise").lstrip(".") if node.module else ""
            names |= {f".{inner.split('.')[0]}"} if inner else {f".{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    return {n for n in names if not n.startswith(".") or (LIBRARY / f"{n[1:]}.py").exists()}


def _third_party(script: Path) -> set[str]:
    """What a rule's script needs installed: the module-level imports of every library module it reaches, plus the
    imports inside the library functions it calls (the library defers heavy imports into the steps that use them).
    Imports deferred one call deeper (a step's helper importing inside itself) are not followed: a lower bound."""
    tree = ast.parse(script.read_text())
    used = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "dropnoise" for a in n.names}
    names = {f".{m}" for m in used}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in used:
            module = ast.parse((LIBRARY / f"{node.value.id}.py").read_text())
            names |= _imports(f for f in module.body if isinstance(f, ast.FunctionDef) and f.name == node.attr)
    seen = set()
    while todo := {n for n in names if n.startswith(".")} - seen:
        for name in todo:
            seen.add(name)
            module = ast.parse((LIBRARY / f"{name[1:]}.py").read_text())
            names |= _imports(n for n in module.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    return {n for n in names if not n.startswith(".") and n not in sys.stdlib_module_names and n != "__future__"}


def _rules_with_env_and_script() -> list[tuple[str, Path, Path]]:
    found = []
    for rules in sorted((ROOT / "workflow/rules").glob("*.smk")):
        parts = re.split(r"^\s*rule (\w+):", rules.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2]):
            env, script = (re.search(rf'{d}:\s*\n\s*"([^"]+)"', body) for d in ("conda", "script"))
            if env and script:
                found.append((name, (rules.parent / env.group(1)).resolve(), (rules.parent / script.group(1)).resolve()))
    return found


@pytest.mark.parametrize("rule,env,script", _rules_with_env_and_script(), ids=lambda x: x if isinstance(x, str) else "")
def test_each_rules_env_has_what_its_script_imports(rule, env, script):
    packages = {spec.name.normalized for spec in conda_specs(yaml.safe_load(env.read_text()))}
    needed = {IMPORT_TO_CONDA.get(name, name) for name in _third_party(script)}
    missing = {name for name in needed - packages if COMES_WITH.get(name) not in packages}
    assert not missing, f"rule {rule} runs in {env.name} but its script needs {sorted(missing)}"


def test_the_import_check_sees_deferred_and_module_level_imports():
    needed = _third_party(ROOT / "workflow/scripts/equivalence_map.py")  # pipeline.equivalence_map -> equivalence
    assert {"sklearn", "pandas", "yaml"} <= needed and "torch" not in needed
