"""Tamper-evident records: a checksum per committed cell, checked by `runs check`, `report` and resume."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evasion import attacks, evaluate
from evasion.cli.main import main
from evasion.errors import StoreError
from evasion.evaluation import AttackSpec
from evasion.evaluation.records import ATTACK_COLUMNS
from evasion.models.classifier import Classifier
from evasion.store import RecordsModified, RunStore
from evasion.store.database import records_digest

pytestmark = pytest.mark.usefixtures("one_thread")

TAMPERED = "model lin, attack pgd-linf, norm linf, epsilon 0.1, batch 1"


def model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), 4, input_shape=(1, 4, 4), name="lin")


def data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=g)
    return x, model().predict(x)


def specs(grid: tuple[float, ...] = (0.05, 0.1)) -> list[AttackSpec]:
    return [
        AttackSpec(attacks.PGD(steps=4), "linf", list(grid)),
        AttackSpec(attacks.DeepFool(steps=5), "l2", [0.3]),  # minimal norms: inf and NaN values
    ]


def run(path: Path, grid: tuple[float, ...] = (0.05, 0.1)) -> object:
    with RunStore(path) as store:
        return evaluate({"lin": model()}, data(), specs(grid), batch_size=8, store=store, self_check=False)


def tamper(path: Path, sql: str, *args: object) -> int:
    """Edit the database behind evasion's back, as a user with sqlite3 would; returns rows changed."""
    with sqlite3.connect(path / "results.sqlite") as db:
        return db.execute(sql, args).rowcount


def flip_one_success(path: Path) -> None:
    changed = tamper(
        path,
        "UPDATE records SET success = 1 - success WHERE model='lin' AND attack='pgd-linf' AND epsilon=0.1 AND idx=9",
    )
    assert changed == 1


def test_an_unmodified_store_verifies(tmp_path, capsys):
    run(tmp_path / "r")
    with RunStore.open(tmp_path / "r") as store:
        found = store.integrity()
        assert found.ok and found.verified == found.cells == len(store.cells()) > 0
        assert all(c.records_sha256 for c in store.cells())
    assert main(["runs", "check", str(tmp_path / "r")]) == 0
    assert f"all {found.cells} cells verified" in capsys.readouterr().out


def test_runs_check_names_the_one_edited_cell_and_fails(tmp_path, capsys):
    run(tmp_path / "r")
    flip_one_success(tmp_path / "r")
    assert main(["runs", "check", str(tmp_path / "r")]) == 1
    out = capsys.readouterr().out
    modified = [line for line in out.splitlines() if line.startswith("modified:")]
    assert modified == [
        f"modified: {TAMPERED}: its records differ from the checksum written when it was committed"
    ]
    assert "1 modified of" in out
    with RunStore.open(tmp_path / "r") as store:
        found = store.integrity()
    assert [m.stored.cell.key for m in found.modified] == ["budget|lin|pgd-linf|0.1|1"]
    assert found.verified == found.cells - 1
    assert main(["runs", "show", str(tmp_path / "r")]) == 0  # shows the run, tampered cell first
    assert capsys.readouterr().out.startswith(f"MODIFIED: {TAMPERED}: its records differ")


def test_edits_of_a_float_a_cell_entry_or_the_checksum_itself_are_detected(tmp_path):
    run(tmp_path / "r")
    path = tmp_path / "r"
    tamper(
        path,
        "UPDATE records SET confidence = confidence + 1e-12 WHERE attack='pgd-linf' AND idx=0 AND epsilon=0.05",
    )
    tamper(path, "UPDATE cells SET seconds = seconds + 1 WHERE key='clean|lin||0.0|1'")
    tamper(path, "DELETE FROM checksums WHERE key='search|lin|deepfool-l2|inf|0'")
    with RunStore.open(path) as store:
        found = store.integrity()
    where = sorted(m.where for m in found.modified)
    assert where == [
        "model lin, attack deepfool-l2, norm l2, epsilon unbounded, batch 0",
        "model lin, attack pgd-linf, norm linf, epsilon 0.05, batch 0",
        "model lin, clean predictions, batch 1",
    ]
    assert "checksum is missing" in next(str(m) for m in found.modified if "deepfool" in m.where)


def test_a_value_edited_to_text_is_a_named_damaged_cell(tmp_path, capsys):
    run(tmp_path / "r")
    tamper(
        tmp_path / "r",
        "UPDATE records SET norm_value='oops' WHERE attack='pgd-linf' AND epsilon=0.1 AND idx=9",
    )
    assert main(["runs", "check", str(tmp_path / "r")]) == 1
    out = capsys.readouterr().out
    assert (
        f"damaged: {TAMPERED}: column 'norm_value' of table records holds a value that is not a number" in out
    )


def test_report_refuses_a_tampered_store_unless_asked_and_then_says_so(tmp_path, capsys):
    run(tmp_path / "r")
    flip_one_success(tmp_path / "r")
    report = tmp_path / "r" / "report.html"
    assert main(["report", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "1 cell(s) were modified" in err and TAMPERED in err
    assert not report.exists()
    assert main(["report", str(tmp_path / "r"), "--allow-modified"]) == 0
    assert TAMPERED in capsys.readouterr().err
    html = report.read_text(encoding="utf-8")
    assert "<title>[MODIFIED RECORDS]" in html
    assert 'class="flag bad">RECORDS MODIFIED: 1 cell(s)' in html and TAMPERED in html
    with RunStore.open(tmp_path / "r") as store, pytest.raises(StoreError, match="modified after they were"):
        store.evaluation()


def test_a_resume_refuses_the_tampered_cell_and_recomputes_it_after_repair(tmp_path):
    fresh = run(tmp_path / "f")
    run(tmp_path / "r")
    flip_one_success(tmp_path / "r")
    with pytest.raises(RecordsModified, match=TAMPERED):
        run(tmp_path / "r")  # a resume reads every committed cell: the edited one is not reused
    with RunStore.open(tmp_path / "r") as store:
        assert store.sessions()[-1]["status"].startswith("failed: RecordsModified")
    assert main(["runs", "check", str(tmp_path / "r"), "--repair"]) == 0
    assert "budget|lin|pgd-linf|0.1|1" not in RunStore.open(tmp_path / "r").completed()
    assert run(tmp_path / "r").records == fresh.records  # recomputed, equal to an untouched run
    assert main(["runs", "check", str(tmp_path / "r")]) == 0


def _make_old(path: Path) -> None:
    """Turn a store into one written before checksums and session statuses existed."""
    with sqlite3.connect(path / "results.sqlite") as db:
        db.execute("DROP TABLE checksums")
        db.execute("DELETE FROM meta WHERE key='checksums_since'")
        for column in ("status", "computed", "reused"):
            db.execute(f"ALTER TABLE sessions DROP COLUMN {column}")


def test_an_old_store_is_reported_unverified_not_blessed(tmp_path, capsys):
    run(tmp_path / "r")
    _make_old(tmp_path / "r")
    flip_one_success(tmp_path / "r")  # undetectable without a checksum: it must not say "verified"
    assert main(["runs", "check", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    with RunStore.open(tmp_path / "r") as store:
        n = len(store.cells())
        assert store.sessions()[0]["status"] == "finished"  # its end was recorded before statuses
    assert f"{n} cell(s) unverified (written before checksums)" in out and "all" not in out
    assert main(["report", str(tmp_path / "r")]) == 0
    html = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert f"{n} of {n} cells are unverified (written before checksums)" in html
    # opening did not compute checksums for the old cells; a resume adding an epsilon checksums the new ones
    run(tmp_path / "r", grid=(0.05, 0.1, 0.2))
    with RunStore.open(tmp_path / "r") as store:
        found = store.integrity()
    assert len(found.unverified) == n and found.verified == found.cells - n > 0 and found.ok


def _columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {k: rng.integers(0, 3, n).astype(t) for k, t in ATTACK_COLUMNS.items()}
    cols["index"] = np.arange(10, 10 + n, dtype=np.int64)
    cols["confidence"] = rng.random(n)
    cols["minimal_norm"] = np.array([math.nan, math.inf, -0.0, 0.5][:n])
    return cols


def test_the_digest_is_canonical_and_sensitive():
    entry = ("budget|m|a|0.1|0", "budget", "m", "a", 0.1, 0, 10, 4, None, None, 1.5)
    cols = _columns(4, 0)
    d = records_digest(entry, ATTACK_COLUMNS, cols)
    shuffled = {k: v[[2, 0, 3, 1]] for k, v in cols.items()}
    assert records_digest(entry, ATTACK_COLUMNS, shuffled) == d  # rows in any order
    same = {**cols, "minimal_norm": np.array([-math.nan, math.inf, 0.0, 0.5])}
    assert records_digest(entry, ATTACK_COLUMNS, same) == d  # NaN payloads, -0.0 as SQLite stores them
    as_ints = {**cols, "success": cols["success"].astype(np.int64)}
    assert records_digest(entry, ATTACK_COLUMNS, as_ints) == d  # a bool read back as 0/1
    assert records_digest((*entry[:-1], 1.5000001), ATTACK_COLUMNS, cols) != d
    for name in ATTACK_COLUMNS:
        changed = {k: v.copy() for k, v in cols.items()}
        column = changed[name]
        column[1] = (
            not column[1] if column.dtype == np.bool_ else 7 if name == "minimal_norm" else column[1] + 1
        )
        assert records_digest(entry, ATTACK_COLUMNS, changed) != d, name
