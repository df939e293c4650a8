"""Records of a run: session status and end, reused cells, labelled summary columns, class names, file modes."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from evasion import attacks, evaluate
from evasion._cache import atomic_write_bytes
from evasion.cli.main import main
from evasion.datasets.base import Dataset
from evasion.evaluation import AttackSpec, ProgressEvent
from evasion.models.classifier import Classifier
from evasion.reports.evaluation_report import build_report, write_report
from evasion.store import RunStore
from evasion.store.reader import session_status

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["zebra", "yak", "xerus"]


def model() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    return Classifier(net, 3, input_shape=(1, 4, 4), name="lin")


def data(n: int = 16) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=g)
    return Dataset(x, model().predict(x), list(CLASSES), name="animals")


def specs() -> list[AttackSpec]:
    return [
        AttackSpec(attacks.PGD(steps=4), "linf", [0.05, 0.1, 0.3]),
        AttackSpec(attacks.PGD(steps=4), "l2", [0.5, 1.0]),
    ]


def run(path: Path, progress=None):  # type: ignore[no-untyped-def]
    """What `evasion evaluate` does: evaluate into the store, then read it back for the report."""
    with RunStore(path, session={"command": "evaluate"}) as store:
        evaluate(
            {"lin": model()}, data(), specs(), batch_size=8, store=store, progress=progress, self_check=False
        )
        return store.evaluation()


def stop_after(n: int, exc: type[BaseException]):  # type: ignore[no-untyped-def]
    def progress(event: ProgressEvent) -> None:
        if event.kind == "cell" and not event.cached and event.done >= n:
            raise exc

    return progress


class Crash(Exception):
    pass


def test_the_report_written_at_the_end_of_a_session_shows_it_finished(tmp_path):
    ev = run(tmp_path / "r")
    (session,) = ev.meta["sessions"]
    assert session["status"] == "finished" and session["finished"] >= session["started"]
    html = build_report(ev).render()
    sessions = html.split("Sessions (each invocation")[1]
    assert "<td>finished</td>" in sessions and "(not yet)" not in sessions


def test_a_report_written_mid_session_says_running(tmp_path):
    seen = []
    with RunStore(tmp_path / "r") as store:

        def progress(event: ProgressEvent) -> None:
            if event.kind == "cell" and event.done == 2:
                seen.append(store.evaluation(examples=False))

        evaluate(
            {"lin": model()}, data(), specs(), batch_size=8, store=store, progress=progress, self_check=False
        )
    (session,) = seen[0].meta["sessions"]
    assert session["status"] == "running" and session["finished"] is None
    assert "<td>running</td><td>" in build_report(seen[0]).render()


def test_an_interrupted_session_is_not_listed_as_finished(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "r", progress=stop_after(3, KeyboardInterrupt))
    with pytest.raises(Crash):
        run(tmp_path / "r", progress=stop_after(5, Crash))
    run(tmp_path / "r")
    with RunStore.open(tmp_path / "r") as store:
        statuses = [s["status"] for s in store.sessions()]
    assert statuses == ["interrupted", "failed: Crash", "finished"]
    assert main(["runs", "show", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"#1 evaluate engine=\?: interrupted; started .*, ended .*; 3 cells computed, 0 reused", out
    )
    assert "#2 evaluate engine=?: failed: Crash;" in out


def test_a_session_without_a_recorded_end_is_running_or_killed():
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(child.stdout)
    import socket

    here = socket.gethostname()
    assert (
        session_status({"id": 1, "finished": None, "pid": dead, "host": here}) == "killed (no end recorded)"
    )
    assert session_status({"id": 1, "finished": None, "pid": os.getpid(), "host": here}) == "running"
    assert session_status({"id": 4, "finished": None}, current=4) == "running"
    assert session_status({"id": 1, "finished": None, "pid": 1, "host": "elsewhere"}).startswith(
        "running, or"
    )
    assert session_status({"id": 1, "finished": 5.0}) == "finished"  # an old store's recorded end


def test_reused_cells_are_counted_per_session(tmp_path, capsys):
    with pytest.raises(Crash):
        run(tmp_path / "r", progress=stop_after(4, Crash))
    run(tmp_path / "r")
    run(tmp_path / "r")
    with RunStore.open(tmp_path / "r") as store:
        total = len(store.cells())
        counts = [(s["computed"], s["reused"]) for s in store.sessions()]
        by_session = [sum(c.session == i for c in store.cells()) for i in (1, 2, 3)]
    assert counts == [(4, 0), (total - 4, 4), (0, total)]
    assert by_session == [4, total - 4, 0]
    assert main(["runs", "show", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"({total} cells reused from" in out  # the latest session's
    assert "#2 evaluate engine=?: finished; " in out and f"{total - 4} cells computed, 4 reused" in out


def test_summary_columns_say_which_norm_and_epsilon_they_are(tmp_path):
    html = build_report(run(tmp_path / "r")).render()
    summary = html.split('id="summary"')[1].split("</section>")[0]
    heads = re.findall(r"<th>([^<]*)</th>", summary)
    assert "worst-case accuracy, linf eps 0.1" in heads and "rejected, linf eps 0.1" in heads
    assert (
        "worst-case accuracy, linf eps 0.3 (largest)" in heads and "rejected, linf eps 0.3 (largest)" in heads
    )
    assert "worst-case accuracy, l2 eps 1 (largest)" in heads and "rejected, l2 eps 1 (largest)" in heads
    assert "worst-case accuracy" not in heads and "rejected" not in heads  # no bare, ambiguous column


def _grid_labels(html: str) -> list[str]:
    return re.findall(r"true \d+ [a-z]+", html)


def test_the_datasets_class_names_appear_in_the_image_grids(tmp_path):
    stored = run(tmp_path / "r")
    assert stored.meta["classes"] == CLASSES and stored.examples
    assert _grid_labels(build_report(stored).render())
    direct = evaluate({"lin": model()}, data(), specs(), batch_size=8, self_check=False)  # no store
    labels = _grid_labels(build_report(direct).render())
    assert labels and all(label.split()[2] == CLASSES[int(label.split()[1])] for label in labels)


@pytest.fixture
def umask_027():  # type: ignore[no-untyped-def]
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_follow_the_umask(tmp_path, umask_027):
    ev = run(tmp_path / "r")
    write_report(ev, tmp_path / "r" / "report.html")
    files = [
        "run.json",
        "inputs.npz",
        "report.html",
        *[f"shards/{p.name}" for p in (tmp_path / "r/shards").iterdir()],
    ]
    assert len(files) > 3
    assert {f: _mode(tmp_path / "r" / f) for f in files} == {f: 0o640 for f in files}
    os.umask(0o022)
    assert _mode(atomic_write_bytes(tmp_path / "a.bin", b"x")) == 0o644
    (tmp_path / "a.bin").chmod(0o600)  # an existing file keeps its mode, as with open(..., "w")
    assert _mode(atomic_write_bytes(tmp_path / "a.bin", b"y")) == 0o600
