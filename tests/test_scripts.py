"""The shell scripts a user runs first: `scripts/test.sh` shows pytest's counts, `scripts/main.sh`
resolves paths from where the user stands, and sets up the environment only when needed."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _pytest_args_of_test_sh() -> list[str]:
    """The arguments `scripts/test.sh` passes to pytest (before the user's "$@")."""
    for line in (SCRIPTS / "test.sh").read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:3] == ["python", "-m", "pytest"]:
            return [w for w in words[3:] if w != "$@"]
    raise AssertionError("scripts/test.sh does not run python -m pytest")


def test_test_sh_keeps_pytests_summary_line(tmp_path: Path) -> None:
    """pyproject's addopts plus test.sh's own options: at most one -q, or the counts vanish."""
    addopts = re.search(r'^addopts\s*=\s*"([^"]*)"', (REPO / "pyproject.toml").read_text(), re.M)
    options = shlex.split(addopts.group(1) if addopts else "") + _pytest_args_of_test_sh()
    quiet = sum(o.count("q") for o in options if re.fullmatch(r"-q+", o)) + options.count("--quiet")
    assert quiet <= 1, options
    # and the real thing: test.sh's pytest options on a small test file end with the counts line
    (tmp_path / "test_small.py").write_text(
        "import pytest\n\ndef test_a():\n    pass\n\n@pytest.mark.skip\ndef test_b():\n    pass\n"
    )
    config = ["-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), "-p", "no:cacheprovider"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *config,
            *_pytest_args_of_test_sh(),
            str(tmp_path / "test_small.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^1 passed, 1 skipped in [\d.]+s", run.stdout, re.M), run.stdout


def _fake_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of scripts/main.sh in a folder whose setup.sh and evasion only report what they got."""
    repo, log = tmp_path / "repo", tmp_path / "calls.log"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPTS / "main.sh", repo / "scripts" / "main.sh")
    (repo / "pyproject.toml").write_text("[project]\nname = 'fake'\n")
    (repo / "scripts" / "setup.sh").write_text(
        textwrap.dedent(f"""\
        set -e
        echo "setup $*" >> {shlex.quote(str(log))}
        cd "$(dirname "$0")/.."
        mkdir -p .venv/bin
        printf '#!/bin/sh\\necho "evasion cwd=$(pwd) args=$*" >> {shlex.quote(str(log))}\\n' > .venv/bin/evasion
        chmod +x .venv/bin/evasion
        """)
    )
    return repo, log


def _main_sh(repo: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "EVASION_NO_SETUP"} | env
    return subprocess.run(
        ["bash", str(repo / "scripts" / "main.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=environ,
    )


@needs_bash
def test_main_sh_runs_evasion_where_the_user_stands_and_sets_up_once(tmp_path: Path) -> None:
    repo, log = _fake_repo(tmp_path)
    user = tmp_path / "somewhere" / "else"
    user.mkdir(parents=True)
    run = _main_sh(repo, user, "my.toml", "--out", "runs/mine")
    assert run.returncode == 0, run.stderr
    assert log.read_text().splitlines() == [
        "setup ",
        f"evasion cwd={user} args=evaluate my.toml --out runs/mine",  # not the repository's folder
    ]
    log.unlink()
    assert _main_sh(repo, user, "again.toml").returncode == 0  # ready: no second setup
    assert log.read_text().splitlines() == [f"evasion cwd={user} args=evaluate again.toml"]
    log.unlink()
    stamp = repo / ".venv" / ".main-setup-done"
    os.utime(repo / "pyproject.toml", (stamp.stat().st_mtime + 10,) * 2)  # the dependencies changed
    assert _main_sh(repo, user).returncode == 0
    assert log.read_text().splitlines() == ["setup ", f"evasion cwd={user} args=evaluate"]
    log.unlink()
    os.utime(repo / "pyproject.toml", (stamp.stat().st_mtime + 20,) * 2)
    assert _main_sh(repo, user, EVASION_NO_SETUP="1").returncode == 0  # skipped on request
    assert log.read_text().splitlines() == [f"evasion cwd={user} args=evaluate"]


@needs_bash
def test_main_sh_without_an_environment_says_how_to_make_one(tmp_path: Path) -> None:
    repo, _ = _fake_repo(tmp_path)
    run = _main_sh(repo, tmp_path, EVASION_NO_SETUP="1")
    assert (
        run.returncode == 2
        and "scripts/setup.sh" in run.stderr
        and ".venv/bin/evasion is missing" in run.stderr
    )


@needs_bash
@pytest.mark.skipif(
    not (REPO / ".venv" / "bin" / "evasion").exists(), reason="the repository's .venv is not set up"
)
def test_main_sh_reads_a_relative_config_from_the_callers_folder(tmp_path: Path) -> None:
    """The real script and environment (setup skipped): the user's bad.toml is read, and a missing
    one is reported with the folder it was looked for in."""
    (tmp_path / "bad.toml").write_text(
        '[[models]]\nname = "mnist-cnn"\n[epsilons]\nlinf = [0.1]\n[data]\nsplt = 1\n'
    )
    run = _main_sh(REPO, tmp_path, "bad.toml", "--out", "out", EVASION_NO_SETUP="1")
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "evasion: error: unknown key data.splt in the config (did you mean data.split?); "
        "valid keys: name, split, samples, shuffle, shuffle_seed"
    )
    run = _main_sh(REPO, tmp_path, "absent.toml", EVASION_NO_SETUP="1")
    assert run.returncode == 2
    assert f"config file absent.toml does not exist (looked in {tmp_path})" in run.stderr
    assert not (REPO / "out").exists() and not (tmp_path / "out").exists()
