"""Packaging: pyproject declares what requirements.txt pins, every console script resolves to a callable,
CLI outputs land in the ignored outputs/ folder, and (slow) a fresh install gives a working mf-generate."""

from __future__ import annotations

import importlib
import os
import subprocess
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def _requirements() -> list[str]:
    with open(os.path.join(REPO, "requirements.txt")) as fh:
        return [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]


def test_pyproject_declares_exactly_the_pinned_requirements():
    assert _pyproject()["project"]["dependencies"] == _requirements()


@pytest.mark.parametrize("script", ["mf-app", "mf-generate", "mf-eval", "mf-bench", "mf-examples", "mf-train",
                                    "mf-preview"])
def test_console_scripts_point_at_callables(script):
    target = _pyproject()["project"]["scripts"][script]
    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_cli_outputs_default_to_the_ignored_outputs_folder():
    from mf.generate import DEFAULT_OUT, build_parser

    assert build_parser().parse_args([]).out is None and DEFAULT_OUT.startswith("outputs" + os.sep)
    with open(os.path.join(REPO, ".gitignore")) as fh:
        assert "/outputs/" in fh.read().split()


@pytest.mark.slow
def test_a_fresh_install_gives_a_working_mf_generate(tmp_path):
    """`pip install --no-deps .` into a new venv (without its own pip) whose dependencies, pip and setuptools
    come from this interpreter's site-packages through a .pth file: no network, nothing added to the
    running environment. The dependency list itself is checked against requirements.txt above."""
    import site
    import venv

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    target = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(target, "shared-deps.pth"), "w") as fh:
        fh.write("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", REPO],
                   check=True, cwd=tmp_path, timeout=600)
    # Run from an empty folder: the command must come from the installed package, not the checkout.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(env_dir / "bin" / "mf-generate"), "--help"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--steps" in done.stdout and "outputs" in done.stdout
