"""`make image`: the runtime it picks, the tag and flags it builds with, and what it says when it
cannot build.

The runtimes here are stand-ins on PATH: scripts that answer `info` as a working (or an
engine-less) docker or podman would, and record the `build` command they were given. The real
build and run are CI's (scripts/image-smoke.sh, scripts/kube_play.py in .ci/run).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from adapter import __version__

ROOT = Path(__file__).resolve().parent.parent

ENGINELESS = """#!/bin/sh
if [ "$1" = info ]; then
  echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2; exit 1
fi
exit 1
"""
WORKING = """#!/bin/sh
if [ "$1" = info ]; then echo ok; exit 0; fi
echo "$(basename "$0") $* (in $(pwd)) CONTAINERS_CONF=$CONTAINERS_CONF" >> "$RECORD"
"""


def _runtime(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _make_image(
    bin_dir: Path, record: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    # Only the stand-ins and the basic tools: whatever docker or podman this machine has is hidden.
    tools = bin_dir / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("bash", "basename", "cat", "dirname", "head", "make", "sed", "sh"):
        found = shutil.which(tool)
        assert found is not None, f"{tool} is needed to run make image"
        if not (tools / tool).exists():
            (tools / tool).symlink_to(found)
    return subprocess.run(
        ["make", "--no-print-directory", "image", *args],
        cwd=ROOT,
        env={"PATH": f"{bin_dir}:{tools}", "RECORD": str(record), "HOME": str(bin_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_a_runtime_that_can_build_it_says_what_to_do(tmp_path: Path) -> None:
    _runtime(tmp_path, "docker", ENGINELESS)  # the client is there, its engine is not
    result = _make_image(tmp_path, tmp_path / "record")
    assert result.returncode != 0
    assert "make image: no container runtime here can build the image." in result.stderr
    assert "docker: installed, but 'docker info' failed: Cannot connect to the Docker daemon" in (
        result.stderr
    )
    assert "podman: not installed" in result.stderr
    assert "docs/guides/kubernetes.md" in result.stderr
    assert "No container runtime here" in (ROOT / "docs/guides/kubernetes.md").read_text()
    assert not (tmp_path / "record").exists()


@pytest.mark.parametrize(
    ("runtimes", "env", "used"),
    [
        ({"docker": WORKING, "podman": WORKING}, {}, "docker"),
        ({"docker": ENGINELESS, "podman": WORKING}, {}, "podman"),
        ({"docker": WORKING, "podman": WORKING}, {"CONTAINER_RUNTIME": "podman"}, "podman"),
    ],
)
def test_builds_with_the_first_runtime_that_works_tagged_with_the_version(
    tmp_path: Path, runtimes: dict[str, str], env: dict[str, str], used: str
) -> None:
    for name, script in runtimes.items():
        _runtime(tmp_path, name, script)
    record = tmp_path / "record"
    result = _make_image(tmp_path, record, **env)
    assert result.returncode == 0, result.stderr
    conf = ROOT / "config/podman/containers.conf"
    assert record.read_text() == (
        f"{used} build -t customevent-bridge:{__version__} . (in {ROOT}) CONTAINERS_CONF={conf}\n"
    )
    custom = _make_image(tmp_path, record, "IMAGE=registry.example.com/bridge", **env)
    assert custom.returncode == 0, custom.stderr
    assert f"build -t registry.example.com/bridge:{__version__} ." in record.read_text()


def test_the_chart_pulls_the_tag_make_image_builds() -> None:
    chart = yaml.safe_load((ROOT / "charts/customevent-bridge/Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts/customevent-bridge/values.yaml").read_text())
    assert chart["appVersion"] == __version__
    assert values["image"]["repository"] == "customevent-bridge"
    assert values["image"]["tag"] == ""  # the appVersion
    assert re.search(r"^IMAGE \?= customevent-bridge$", (ROOT / "Makefile").read_text(), re.M)
    assert os.access(ROOT / "scripts/build-image.sh", os.X_OK)


def test_base_image_ca_bundle_and_build_flags_are_passed(tmp_path: Path) -> None:
    _runtime(tmp_path, "podman", WORKING)
    record = tmp_path / "record"
    ca = tmp_path / "proxy-ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    result = _make_image(
        tmp_path,
        record,
        "PYTHON_IMAGE=localhost/customevent-python:3.11-bookworm",
        f"CA_FILE={ca}",
        "BUILD_FLAGS=--network host --pull=never",
        "IMAGE=bridge:dev",
    )
    assert result.returncode == 0, result.stderr
    assert record.read_text().startswith(
        "podman build --build-arg PYTHON_IMAGE=localhost/customevent-python:3.11-bookworm"
        f" --secret id=ca,src={ca} --network host --pull=never -t bridge:dev . "
    )


def test_an_unreadable_ca_bundle_is_refused_before_building(tmp_path: Path) -> None:
    _runtime(tmp_path, "podman", WORKING)
    record = tmp_path / "record"
    result = _make_image(tmp_path, record, f"CA_FILE={tmp_path / 'missing.crt'}")
    assert result.returncode != 0
    assert "is not a readable file" in result.stderr
    assert not record.exists()


def test_an_own_containers_conf_is_kept(tmp_path: Path) -> None:
    _runtime(tmp_path, "podman", WORKING)
    record = tmp_path / "record"
    result = _make_image(tmp_path, record, CONTAINERS_CONF="/etc/mine.conf")
    assert result.returncode == 0, result.stderr
    assert record.read_text().endswith("CONTAINERS_CONF=/etc/mine.conf\n")


def test_the_podman_settings_are_those_debian_podman_needs_here() -> None:
    conf = tomllib.loads((ROOT / "config/podman/containers.conf").read_text())
    assert conf["engine"] == {
        "runtime": "runc",
        "cgroup_manager": "cgroupfs",
        "events_logger": "file",
    }
    assert conf["containers"]["default_ulimits"] == ["nofile=20000:20000", "nproc=32768:32768"]


def test_the_lock_holds_every_runtime_dependency_at_a_version_pyproject_allows() -> None:
    """requirements/image.txt is current (`make lock`): every dependency the daemon declares,
    and those of the ``otel`` extra the image installs, is pinned there within its bounds."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["otel"]]
    pinned = {}
    for line in (root / "requirements" / "image.txt").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, version = line.split(" ")[0].partition("==")
            pinned[canonicalize_name(name)] = version
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not in the lock: run make lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"the lock pins {requirement.name} {pinned[name]}, outside {requirement.specifier}"
        )
