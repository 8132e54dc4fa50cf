"""The Dockerfile, checked without a Docker engine (none here: the image is not built by these tests).

Parsed into instructions, it must: install a C compiler (Triton, inductor), install the dependencies in a
layer that depends on pyproject.toml alone and comes before the source is copied, switch to a non-root
user after every install, declare the data and runs volumes the `docker run` line of docs/experiments.md mounts, and
copy only what .dockerignore lets into the build context. The command that lists the dependencies is
run here on the real pyproject.toml.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.app.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as in the image

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def index(steps: list[tuple[str, str]], keyword: str, pattern: str) -> int:
    found = [i for i, (k, a) in enumerate(steps) if k == keyword and re.search(pattern, a)]
    assert found, f"no {keyword} matching {pattern!r} in the Dockerfile"
    return found[0]


def test_compiler_present():
    steps = instructions()
    base = steps[0][1]
    installs = " ".join(a for k, a in steps if k == "RUN" and "apt-get install" in a)
    full_image = not re.search(r"slim|alpine", base)  # the full python images carry gcc
    assert full_image or re.search(r"\b(build-essential|gcc)\b", installs), (base, installs)


def test_dependencies_are_a_cached_layer_before_the_source():
    steps = instructions()
    deps = index(steps, "RUN", r"pip install -r requirements\.txt")
    source = index(steps, "COPY", r"^mot_lightning\b")
    assert deps < source
    copies_before = [a for k, a in steps[:deps] if k in ("COPY", "ADD")]
    assert copies_before == ["pyproject.toml ./"]  # a source or README change leaves the layer cached
    project = index(steps, "RUN", r"pip install --no-deps")  # the project adds nothing to resolve
    assert project > source


def test_requirements_command_lists_pyproject_dependencies(tmp_path):
    steps = instructions()
    run = steps[index(steps, "RUN", r"pip install -r requirements\.txt")][1]
    listing = run.split(" && ")[0]  # python -c "..." > requirements.txt
    assert listing.startswith("python -c ")
    listing = shlex.quote(sys.executable) + listing[len("python"):]  # this interpreter, as the image's python
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = sorted(project["optional-dependencies"])[:2]
    for chosen in ([], extras):
        env = {**os.environ, "EXTRAS": ",".join(chosen)}
        subprocess.run(["sh", "-c", listing], cwd=tmp_path, env=env, check=True)
        listed = (tmp_path / "requirements.txt").read_text().split("\n")
        expected = project["dependencies"] + [d for e in chosen for d in project["optional-dependencies"][e]]
        assert [line.strip() for line in listed if line.strip()] == expected


def test_runs_as_a_non_root_user_after_every_install():
    steps = instructions()
    users = [i for i, (k, _) in enumerate(steps) if k == "USER"]
    assert users, "no USER line: the container would run as root"
    user = steps[users[-1]][1].split(":")[0]
    assert user not in ("root", "0")
    installs = [i for i, (k, a) in enumerate(steps) if k == "RUN" and re.search(r"pip install|apt-get", a)]
    assert max(installs) < users[-1]
    assert steps[-1][0] == "CMD" and "mot" in steps[-1][1]


def test_volumes_match_the_readme_line_and_own_their_folders():
    steps = instructions()
    volumes = set(re.findall(r'"([^"]+)"', steps[index(steps, "VOLUME", ".")][1]))
    assert volumes == {"/app/data", "/app/runs"}
    guide = (ROOT / "docs" / "experiments.md").read_text()  # the Docker lines of the experiments guide
    line = next(line for line in guide.splitlines() if line.startswith("docker run") and "mot_lightning" in line)
    mounted = set(re.findall(r"-v \S+:(/\S+)", line))
    assert mounted == volumes and "--shm-size" in line
    assert line.split("#")[0].strip() in DOCKERFILE.read_text()  # the header shows the same command
    workdir = steps[index(steps, "WORKDIR", ".")][1]
    owned = steps[index(steps, "RUN", r"chown")][1]
    for volume in volumes:  # named volumes take the image folder's owner: the non-root user can write
        assert os.path.relpath(volume, workdir) in owned.split("chown", 1)[1], (volume, owned)


def test_build_context_holds_every_copied_path():
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()  # an allow-list: nothing else goes in
    for keyword, args in instructions():
        if keyword == "COPY":
            for source in args.split()[:-1]:
                assert source in allowed and (ROOT / source).exists(), source
