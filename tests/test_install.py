"""Installing: one version, printed by `sid --version`; requirements.lock pins every package but torch (each machine
installs its own build of requirements-torch.txt's version first) for every Python and platform, and is the
environment the tests run in."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

import sid

ROOT = Path(__file__).resolve().parents[1]  # not from shared_helpers, which imports torch: these run without it


def lock_entries() -> dict[str, tuple[str, str | None, int]]:
    """requirements.lock as {name: (version, marker or None, number of hashes)}."""
    text = (ROOT / "requirements.lock").read_text()
    entries = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2]):  # after the two header lines
        head = block.split("\\")[0].strip()
        requirement = Requirement(head)
        version = str(requirement.specifier).removeprefix("==")
        entries[requirement.name] = (version, str(requirement.marker) if requirement.marker else None,
                                     block.count("--hash=sha256:"))
    return entries


def torch_pin() -> Requirement:
    lines = [line for line in (ROOT / "requirements-torch.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, lines
    return Requirement(lines[0])


def test_sid_version_prints_the_one_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sid.__version__"}
    done = subprocess.run([sys.executable, "-m", "sid", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"sid-studies {sid.__version__}\n", done.stderr
    assert metadata.version("sid-studies") == sid.__version__  # what the installed package (and Parquet rows) say


def test_the_lock_pins_every_package_but_torch_with_hashes():
    entries = lock_entries()
    assert len(entries) > 100
    assert not [name for name in entries if re.match(r"torch$|nvidia-|triton$|cuda-", name)]
    assert all(re.fullmatch(r"\d[\w.]*", version) and hashes for version, _, hashes in entries.values()), entries
    assert torch_pin().name == "torch" and str(torch_pin().specifier).startswith("==")
    header = (ROOT / "requirements.lock").read_text().split("\n")[1]
    assert "--universal" in header and "--excludes requirements-torch.txt" in header and "--generate-hashes" in header


def test_the_tests_run_with_the_locked_versions():
    """The environment is the lock (make setup), so a re-lock that was not installed and tested shows up here."""
    wrong = {}
    for name, (version, marker, _) in lock_entries().items():
        if marker is None or Marker(marker).evaluate():
            installed = metadata.version(name)
            if installed != version:
                wrong[name] = (version, installed)
    assert not wrong, f"locked vs installed: {wrong}"
