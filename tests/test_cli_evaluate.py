"""`evasion evaluate`, `evasion runs`, `evasion report`: end to end, kill -9 resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evasion.cli.main import main

TINY = """
[run]
name = "tiny"
batch_size = {batch}

[data]
name = "digits"
samples = {samples}

[[models]]
name = "digits-mlp"

[epsilons]
linf = [0.02, 0.05, 0.1, 0.2]
l2 = [0.5, 1.0]

[[attacks]]
attack = "pgd"
norm = "linf"
params = {{ steps = {steps} }}

[[attacks]]
attack = "deepfool"
norm = "l2"
params = {{ steps = 10 }}

[[attacks]]
attack = "pgd"
norm = "l2"
params = {{ steps = {steps} }}
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def config(tmp_path: Path, samples: int = 40, batch: int = 20, steps: int = 5) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(samples=samples, batch=batch, steps=steps))
    return path


def test_evaluate_writes_a_run_folder_and_a_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["evaluate", str(config(tmp_path)), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "digits-mlp: clean accuracy" in text and "worst-case-linf" in text
    for name in ("report.html", "summary.json", "config.toml", "results.sqlite", "run.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert {c["attack"] for c in summary["curves"]} >= {"pgd-linf", "deepfool-l2", "pgd-l2", "worst-case-l2"}
    assert "[[attacks]]" in (out / "config.toml").read_text()
    html = (out / "report.html").read_text()
    assert "<svg" in html and "data:image/png;base64" in html and "Attack-failure checks" in html
    # the same command again: everything comes from the store
    assert main(["evaluate", str(config(tmp_path)), "--out", str(out), "--quiet", "--no-report"]) == 0
    assert "cells reused" in capsys.readouterr().out
    assert main(["runs", "list", "--root", str(tmp_path)]) == 0
    assert "complete" in capsys.readouterr().out
    assert main(["runs", "show", "run", "--root", str(tmp_path)]) == 0
    assert "status: complete; 2 session(s)" in capsys.readouterr().out
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()


def _records(path: Path) -> list[tuple]:
    with sqlite3.connect(path / "results.sqlite") as db:
        rows = db.execute("SELECT * FROM records ORDER BY model, attack, epsilon, idx").fetchall()
        rows += db.execute("SELECT * FROM clean ORDER BY model, idx").fetchall()
    return rows


def _cells(path: Path) -> dict[str, tuple]:
    db_path = path / "results.sqlite"
    if not db_path.exists():
        return {}
    try:
        with sqlite3.connect(db_path, timeout=1) as db:
            return {k: (s, c) for k, s, c in db.execute("SELECT key, session, committed FROM cells")}
    except sqlite3.DatabaseError:  # the schema may not exist yet
        return {}


def _evaluate(cfg: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "evasion.cli.main",
        "evaluate",
        str(cfg),
        "--out",
        str(out),
        "--quiet",
        "--no-report",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_after(proc: subprocess.Popen, out: Path, cells: int, timeout: float = 240) -> dict[str, tuple]:
    """SIGKILL the process as soon as at least ``cells`` cells are committed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_cells(out)) >= cells:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed; make it longer"
    return _cells(out)


def test_kill_9_at_any_moment_then_resume_equals_an_uninterrupted_run(tmp_path):
    cfg = config(tmp_path, samples=80, batch=10, steps=20)
    out = tmp_path / "killed"
    first = _kill_after(_evaluate(cfg, out), out, 3)
    second = _kill_after(_evaluate(cfg, out), out, len(first) + 10)
    assert {k: second[k] for k in first} == first, "committed cells were recomputed"
    done = _evaluate(cfg, out)
    assert done.wait(timeout=300) == 0, done.stderr.read() if done.stderr else ""
    final = _cells(out)
    assert {k: final[k] for k in second} == second
    assert {s for s, _ in final.values()} == {1, 2, 3}
    clean = tmp_path / "clean"  # uninterrupted, in this process (also one torch thread)
    assert main(["evaluate", str(cfg), "--out", str(clean), "--quiet", "--no-report"]) == 0
    assert set(final) == set(_cells(clean))
    assert _records(out) == _records(clean), "a resumed run must equal an uninterrupted one"


@pytest.mark.parametrize(
    "setup, args, code, words",
    [
        (None, ["evaluate", "{tmp}/missing.toml"], 2, "does not exist"),
        ("[run\n", ["evaluate", "{tmp}/c.toml"], 2, "not valid TOML"),
        (
            "[[models]]\nname='digits-mlp'\n[[attacks]]\nattack='pgdd'\nnorm='linf'\nepsilons=[0.1]\n",
            ["evaluate", "{tmp}/c.toml"],
            2,
            "unknown attack 'pgdd'",
        ),
        (
            "[[models]]\nname='nope'\n[[attacks]]\nattack='pgd'\nnorm='linf'\nepsilons=[0.1]\n",
            ["evaluate", "{tmp}/c.toml", "--out", "{tmp}/o"],
            2,
            "unknown model 'nope'",
        ),
        (
            "[data]\nname='nope'\n[[models]]\nname='digits-mlp'\n[[attacks]]\nattack='pgd'\nnorm='linf'\nepsilons=[0.1]\n",
            ["evaluate", "{tmp}/c.toml", "--out", "{tmp}/o"],
            2,
            "nope",
        ),
        (
            "[[models]]\nname='digits-mlp'\n[[attacks]]\nattack='pgd'\nnorm='linf'\nepsilons=[-0.1]\n",
            ["evaluate", "{tmp}/c.toml"],
            2,
            "-0.1",
        ),
        (None, ["runs", "show", "nothing", "--root", "{tmp}"], 2, "unknown run 'nothing'"),
        (None, ["report", "{tmp}"], 1, "not a run folder"),
    ],
)
def test_bad_input_gives_one_line_and_an_exit_code(tmp_path, capsys, setup, args, code, words):
    if setup is not None:
        (tmp_path / "c.toml").write_text(setup)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("evasion: error:") and "\n" not in err and words in err, err
    assert not (tmp_path / "o").exists(), "nothing is written before the config is resolved"


def test_runtime_store_errors_exit_1(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = config(tmp_path, samples=20)
    assert main(["evaluate", str(cfg), "--out", str(out), "--quiet", "--no-report"]) == 0
    capsys.readouterr()
    (out / "run.json").write_text(json.dumps({"format": 99, "evasion": "9.9"}))
    assert main(["evaluate", str(cfg), "--out", str(out), "--quiet"]) == 1
    assert "format 99" in capsys.readouterr().err
    (out / "run.json").write_text(json.dumps({"format": 1}))
    for extra in ("-wal", "-shm"):
        Path(str(out / "results.sqlite") + extra).unlink(missing_ok=True)
    (out / "results.sqlite").write_bytes(b"garbage" * 500)
    assert main(["evaluate", str(cfg), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "corrupt" in err and err.count("\n") == 1
