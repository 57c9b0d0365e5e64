"""What `pip install` puts in an environment: one `shadowdiff` package, nothing at the top level
that another distribution could collide with, and a working console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # built from a copy of what the wheel is made of: setuptools writes build/ beside the sources
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("shadowdiff", "replay", "diff", "reports", "schemas"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (whl,) = out.glob("shadowdiff-*.whl")
    return whl


@pytest.mark.slow
def test_the_wheel_installs_one_namespace_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"shadowdiff", next(t for t in top if t.endswith(".dist-info"))}
    for data in (
        "shadowdiff/schemas/verdict.v1.schema.json",
        "shadowdiff/schemas/store.sql",
        "shadowdiff/schemas/outcomes.sql",
        "shadowdiff/reports/templates/report.html.j2",
    ):
        assert data in names


@pytest.mark.slow
def test_only_shadowdiff_imports_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}

    def python(code: str) -> subprocess.CompletedProcess[str]:
        # cwd outside the repository: its folders are not on the path
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    for generic in ("diff", "replay", "reports", "schemas", "shadowdiff_cli"):
        found = python(f"import importlib.util; print(importlib.util.find_spec({generic!r}))")
        assert found.stdout.strip() == "None", f"{generic} importable: {found.stdout}{found.stderr}"
    loaded = python("import shadowdiff.diff.judge, shadowdiff.reports.html; print(shadowdiff.diff.judge.__file__)")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().startswith(str(site))
    cli = subprocess.run(
        [sys.executable, "-m", "shadowdiff", "gate", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0, cli.stderr
    assert "--candidate" in cli.stdout
