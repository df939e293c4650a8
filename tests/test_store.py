"""Run folders: resume after an interruption, incremental additions, corruption, full disks."""

from __future__ import annotations

import errno
import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from evasion import attacks, evaluate
from evasion.errors import StoreError, UnknownNameError
from evasion.evaluation import AttackSpec, ProgressEvent
from evasion.models.classifier import Classifier
from evasion.store import RunStore, find_run, list_runs, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


def model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), 4, input_shape=(1, 4, 4), name="lin")


def data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=g)
    return x, model().predict(x)


def specs(grid: list[float] | None = None, extra: bool = False) -> list[AttackSpec]:
    grid = grid or [0.05, 0.1, 0.2]
    out = [
        AttackSpec(attacks.DeepFool(steps=10), "l2", [0.2, 0.4]),
        AttackSpec(attacks.PGD(steps=5), "linf", grid),
        AttackSpec(attacks.PGD(steps=5), "l2", [0.2, 0.4]),
    ]
    if extra:
        out.append(AttackSpec(attacks.FGSM(), "linf", grid))
    return out


class Crash(Exception):
    pass


def crash_after(n: int):
    def progress(event: ProgressEvent) -> None:
        if event.kind == "cell" and not event.cached and event.done >= n:
            raise Crash

    return progress


def run(path: Path, **kw) -> object:
    with RunStore(path) as store:
        return evaluate({"lin": model()}, data(), kw.pop("specs", specs()), batch_size=8, store=store, **kw)


def sessions_of_cells(path: Path) -> dict[str, int]:
    with sqlite3.connect(path / "results.sqlite") as db:
        return dict(db.execute("SELECT key, session FROM cells").fetchall())


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path):
    with pytest.raises(Crash):
        run(tmp_path / "a", progress=crash_after(7))
    before = sessions_of_cells(tmp_path / "a")
    assert len(before) == 7
    resumed = run(tmp_path / "a")
    after = sessions_of_cells(tmp_path / "a")
    assert {k: after[k] for k in before} == before, "finished cells are not recomputed"
    assert set(after.values()) == {1, 2}
    fresh = run(tmp_path / "b")
    assert resumed.records == fresh.records
    with sqlite3.connect(tmp_path / "a" / "results.sqlite") as db:
        keys = db.execute("SELECT model, attack, epsilon, idx FROM records").fetchall()
    assert not [k for k, c in Counter(keys).items() if c > 1]
    stored = RunStore.open(tmp_path / "a").evaluation()
    assert stored.records == fresh.records
    assert [c.to_dict() for c in stored.curves()] == [c.to_dict() for c in fresh.curves()]


def test_adding_an_attack_or_an_epsilon_computes_only_what_is_new(tmp_path):
    run(tmp_path / "r")
    first = sessions_of_cells(tmp_path / "r")
    more = run(tmp_path / "r", specs=specs([0.05, 0.1, 0.2, 0.3], extra=True))
    cells = sessions_of_cells(tmp_path / "r")
    new = {k for k, s in cells.items() if s == 2}
    # the self-check re-checks what the attacks left, so a new attack makes it stale: it is redone
    derived = {k for k in cells if "self-check-linf" in k}  # fgsm is an L∞ attack
    assert {k: cells[k] for k in first if k not in derived} == {
        k: v for k, v in first.items() if k not in derived
    }
    assert new == {k for k in cells if "fgsm" in k or "|0.3|" in k} | derived
    fresh = run(tmp_path / "f", specs=specs([0.05, 0.1, 0.2, 0.3], extra=True))
    assert more.records == fresh.records
    # an epsilon inside the grid: computed alone, and the curve stays at least as strong
    middle = run(tmp_path / "r", specs=specs([0.05, 0.1, 0.15, 0.2, 0.3], extra=True))
    assert {k for k, s in sessions_of_cells(tmp_path / "r").items() if s == 3} == {
        k for k in sessions_of_cells(tmp_path / "r") if "|0.15|" in k
    }
    alone = run(tmp_path / "g", specs=specs([0.05, 0.1, 0.15, 0.2, 0.3], extra=True))
    for c in alone.curves():
        other = (
            middle.curve(c.model, c.attack) if "worst" not in c.attack else middle.worst_case(c.model, c.norm)
        )
        assert all(a <= b + 1e-12 for a, b in zip(other.accuracy, c.accuracy))


def test_a_changed_configuration_is_refused(tmp_path):
    run(tmp_path / "r")
    changed = [AttackSpec(attacks.PGD(steps=7), "linf", [0.1], name="pgd-linf")]
    with pytest.raises(StoreError, match="configured differently"):
        run(tmp_path / "r", specs=changed)
    with RunStore(tmp_path / "r") as store, pytest.raises(StoreError, match="seed"):
        evaluate({"lin": model()}, data(), specs(), batch_size=8, store=store, seed=3)
    with RunStore(tmp_path / "r") as store, pytest.raises(StoreError, match="batch_size"):
        evaluate({"lin": model()}, data(), specs(), batch_size=6, store=store)
    other = model()
    with torch.no_grad():
        other.module[1].weight.add_(1.0)
    with RunStore(tmp_path / "r") as store, pytest.raises(StoreError, match="weights changed"):
        evaluate({"lin": other}, data(), specs(), batch_size=8, store=store)


def test_a_corrupt_shard_is_detected_not_used(tmp_path):
    run(tmp_path / "r")
    with RunStore.open(tmp_path / "r") as store:
        stored = next(c for c in store.cells() if c.shard is not None)
    cell = stored.cell
    path = tmp_path / "r" / "shards" / str(stored.shard)
    path.write_bytes(path.read_bytes()[:-20] + b"x" * 20)
    with pytest.raises(StoreError, match="corrupt"):
        run(tmp_path / "r")  # resuming reads every committed cell
    with RunStore.open(tmp_path / "r") as store, pytest.raises(StoreError, match="corrupt"):
        store.load(cell)
    path.unlink()
    with RunStore.open(tmp_path / "r") as store, pytest.raises(StoreError, match="cannot be read"):
        store.load(cell)


def test_a_corrupt_database_is_reported(tmp_path):
    run(tmp_path / "r")
    db = tmp_path / "r" / "results.sqlite"
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"corrupt|not a database"):
        RunStore.open(tmp_path / "r")


def test_an_incompatible_run_folder_is_refused(tmp_path):
    run(tmp_path / "r")
    marker = tmp_path / "r" / "run.json"
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "format": 99, "evasion": "9.0"}))
    with pytest.raises(StoreError, match="format 99"):
        run(tmp_path / "r")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.sqlite").write_text("")
    with pytest.raises(StoreError, match=r"run\.json"):
        RunStore(tmp_path / "junk")


def test_a_full_disk_fails_cleanly_and_keeps_what_was_committed(tmp_path, monkeypatch):
    from evasion.store import shards

    real = shards.atomic_write_bytes
    calls = {"n": 0}

    def full(path, data):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(shards, "atomic_write_bytes", full)
    with pytest.raises(StoreError, match="No space left"):
        run(tmp_path / "r")
    kept = sessions_of_cells(tmp_path / "r")
    assert kept and not list((tmp_path / "r" / "shards").glob("*.tmp"))
    monkeypatch.setattr(shards, "atomic_write_bytes", real)
    assert run(tmp_path / "r").records == run(tmp_path / "f").records


def test_one_writer_at_a_time(tmp_path):
    with RunStore(tmp_path / "r") as first:
        evaluate({"lin": model()}, data(8), specs()[1], batch_size=8, store=first)
        with RunStore(tmp_path / "r") as second, pytest.raises(StoreError, match="another process"):
            evaluate({"lin": model()}, data(8), specs()[1], batch_size=8, store=second)


def test_listing_and_finding_runs(tmp_path):
    run(tmp_path / "one")
    with pytest.raises(Crash):
        run(tmp_path / "two", progress=crash_after(3))
    runs = {r.name: r for r in list_runs(tmp_path)}
    assert runs["one"].status == "complete" and runs["one"].models == ["lin"]
    assert runs["two"].status.startswith("incomplete")
    assert find_run("one", tmp_path) == tmp_path / "one"
    assert find_run(tmp_path / "two") == tmp_path / "two"
    assert summarize(tmp_path / "one").attacks == [
        "deepfool-l2",
        "pgd-linf",
        "pgd-l2",
        "self-check-l2",
        "self-check-linf",
    ]
    with pytest.raises(UnknownNameError):
        find_run("three", tmp_path)


def test_damaged_cells_can_be_dropped_and_recomputed(tmp_path, capsys):
    from evasion.cli.main import main

    fresh = run(tmp_path / "f")
    run(tmp_path / "r")
    with RunStore.open(tmp_path / "r") as store:
        shard = next(c.shard for c in store.cells() if c.shard is not None)
    (tmp_path / "r" / "shards" / str(shard)).write_bytes(b"garbage")
    assert main(["runs", "check", str(tmp_path / "r")]) == 1
    assert "damaged:" in capsys.readouterr().out
    assert main(["runs", "check", str(tmp_path / "r"), "--repair"]) == 0
    assert main(["runs", "check", str(tmp_path / "r")]) == 0
    assert run(tmp_path / "r").records == fresh.records


def test_cells_are_typed_records_of_what_was_committed(tmp_path):
    from dataclasses import FrozenInstanceError

    from evasion.store import StoredCell

    run(tmp_path / "r")
    with RunStore.open(tmp_path / "r") as store:
        cells = store.cells()
        assert cells and all(isinstance(c, StoredCell) for c in cells)
        assert {c.key for c in cells} == store.completed()
        assert all(c.session == 1 and c.rows == 8 and c.first == 8 * c.cell.batch for c in cells)
        assert all((c.shard is None) == (c.sha256 is None) for c in cells)
        assert all(c.shard is None for c in cells if c.cell.kind == "clean")
        with pytest.raises(FrozenInstanceError):
            cells[0].rows = 3  # type: ignore[misc]
    assert summarize(tmp_path / "r").seconds == pytest.approx(sum(c.seconds for c in cells))


def test_closing_warns_when_the_end_of_the_session_cannot_be_recorded(tmp_path, monkeypatch):
    from evasion.store import writer

    real = writer.transaction

    def failing(db, what):  # type: ignore[no-untyped-def]
        if what == "closing the session":
            raise StoreError("cannot write the results database (disk I/O error) while closing the session")
        return real(db, what)

    monkeypatch.setattr(writer, "transaction", failing)
    with pytest.warns(RuntimeWarning, match=r"session 1 was not recorded .*disk I/O error"):
        run(tmp_path / "r")
    with RunStore.open(tmp_path / "r") as store:
        assert store.sessions()[0]["finished"] is None and not store.missing()
