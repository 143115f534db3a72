"""Installed as a package: the wheel, in a fresh virtual environment outside the repository, runs the demo and a
shipped config by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, THREADS, cli_env, memorised_run_overrides

pytestmark = pytest.mark.slow


def _built_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the sources (building in the repository would leave build/ there)."""
    source = tmp_path / "source"
    for part in ("src", "pyproject.toml", "README.md", "LICENSE"):
        origin = REPO / part
        if origin.is_dir():
            shutil.copytree(origin, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif origin.exists():
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("unlearnkit-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed. Its dependencies (torch, transformers, ...) are this
    environment's, reached through a path file: paths listed there are not scanned for .pth files, so the
    repository's editable install does not come along, and ``import unlearnkit`` finds the wheel's copy."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return venv


def test_the_wheel_installed_elsewhere_runs_the_demo_and_a_shipped_config_by_name(memorized_model_dir, tmp_path):
    wheel = _built_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:  # the licence travels with the package
        assert any(name.endswith(".dist-info/licenses/LICENSE") for name in archive.namelist())
    venv = _fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**cli_env(), "OMP_NUM_THREADS": THREADS, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    def unlearnkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "unlearnkit"), *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=600)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import unlearnkit; print(unlearnkit.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO)

    listed = unlearnkit("configs")
    assert listed.returncode == 0 and "paper/gpt-neo-125m-flora-ihl" in listed.stdout, listed.stderr
    demo = unlearnkit("demo", "--tiny", "--output", "demo", "-q")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert (elsewhere / "demo" / "demo.json").is_file() and (elsewhere / "demo" / "model" / "README.md").is_file()

    copied = unlearnkit("configs", "cp", "paper/gpt-neo-125m-lora-ihl", "mine.yaml")
    assert copied.returncode == 0, copied.stderr
    out = elsewhere / "run"
    overrides = [*memorised_run_overrides(memorized_model_dir, out), "train.epochs=1", "eval.audit=false",
                 "output.fail_if_not_forgotten=false"]
    for config in ("paper/gpt-neo-125m-lora-ihl", "mine.yaml"):  # by name, and the copy that names its base
        done = unlearnkit("run", config, *[p for o in overrides for p in ("--set", o)], "--overwrite", "-q")
        assert done.returncode == 0, done.stderr[-2000:]
        assert yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["adapter"]["name"] == "lora"
