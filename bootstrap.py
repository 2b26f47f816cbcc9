#!/usr/bin/env python3
"""Set up LAMP in ``.venv/`` and run its main job or its tests.

Usage (from the repository root, with nothing installed but Python >= 3.11)::

    python3 bootstrap.py demo [lamp demo options]   # set up, then run the end-to-end demo
    python3 bootstrap.py test [pytest options]      # set up, then run the test suite

The virtual environment is created in ``.venv/`` next to this file and the package is
installed into it in editable mode with its test extras, then the packages of the
``no-build-isolation`` extra of ``pyproject.toml`` (pyradiomics: no wheel, and its
``setup.py`` imports numpy, so it builds only against the numpy already installed). The
install is redone only when ``pyproject.toml`` changes (a stamp file in ``.venv/``
records its hash), so a second call starts at once. Only the standard library is used here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".lamp-install-stamp"


def _python() -> Path:
    sub = "Scripts" if os.name == "nt" else "bin"
    return VENV / sub / ("python.exe" if os.name == "nt" else "python")


def _want_stamp() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{digest} python{sys.version_info.major}.{sys.version_info.minor}"


def _no_isolation_requirements() -> list[str]:
    """The requirements built against the venv's own numpy (``pip --no-build-isolation``)."""
    import tomllib  # here, so that Python < 3.11 gets ensure_env's message, not an ImportError

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(meta["project"].get("optional-dependencies", {}).get("no-build-isolation", []))


def ensure_env() -> Path:
    """Create ``.venv`` and install the package into it unless it is already up to date."""
    if sys.version_info < (3, 11):
        sys.exit(f"LAMP needs Python >= 3.11; this is {sys.version.split()[0]}.")
    py = _python()
    if not py.exists():
        print(f"[bootstrap] creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    want = _want_stamp()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return py
    print("[bootstrap] installing lamp-pet and its dependencies (a few minutes the first time)",
          flush=True)
    quiet = ["--quiet", "--disable-pip-version-check"]
    subprocess.run([str(py), "-m", "pip", "install", *quiet, "--upgrade", "pip"], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", *quiet, "-e", f"{ROOT}[test]"], check=True, cwd=ROOT
    )
    late = _no_isolation_requirements()
    if late:
        # without build isolation the build uses the venv's setuptools: make sure it is there
        subprocess.run([str(py), "-m", "pip", "install", *quiet, "setuptools"], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", *quiet, "--no-build-isolation", *late], check=True
        )
    STAMP.write_text(want + "\n")
    return py


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    py = ensure_env()
    if what == "setup":
        return 0
    if what == "demo":
        cmd = [str(py), "-m", "lamp", "demo", *rest]
    else:
        cmd = [str(py), "-m", "pytest", *rest]
    print("[bootstrap] " + " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
