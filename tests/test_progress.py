"""Progress reporting: timestamped log lines with a throttle, an ETA from this session's work only,
rich bars that fit an 80-column terminal, and progress while a dataset is built."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
from rich.console import Console

from evasion.cli.common import _RichProgress, progress, rich_progress
from evasion.cli.main import main
from evasion.progress import LineProgress, SessionRate, counter, duration, log_counter

STAMP = re.compile(r"^\d\d:\d\d:\d\d ")


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_duration_pieces():
    assert [duration(s) for s in (0, 42.4, 185, 3720, -3)] == ["0s", "42s", "3m05s", "1h02m", "0s"]


def test_log_lines_are_timestamped_and_throttled():
    clock, lines = FakeClock(), []
    bar = LineProgress(lines.append, interval=5.0, min_gap=1.0, clock=clock)
    overall = bar.add("all cells", 100)
    group = bar.add("model / pgd", 10)
    for _ in range(5):  # five cells within 0.5 s: one line, not five
        clock.sleep(0.1)
        bar.advance(overall)
        bar.advance(group)
    assert len(lines) == 1 and STAMP.match(lines[0])
    assert (
        "all cells 5/100" not in lines[0] and "all cells 1/100" in lines[0] and "model / pgd 1/10" in lines[0]
    )
    clock.sleep(1.0)
    bar.advance(overall)  # the line waits for the current task (it follows in the same cell)
    assert len(lines) == 1
    bar.advance(group)
    assert len(lines) == 2 and "all cells 6/100" in lines[1] and "model / pgd 6/10" in lines[1]


def test_heartbeat_writes_a_status_line_while_a_long_cell_runs():
    clock, lines = FakeClock(), []
    bar = LineProgress(lines.append, interval=5.0, min_gap=1.0, clock=clock)
    bar.add("all cells", 10)
    bar.tick()  # nothing done yet, but work is under way: a line
    assert len(lines) == 1 and "all cells 0/10" in lines[0] and "ETA ?" in lines[0]
    clock.sleep(4.0)
    bar.tick()
    assert len(lines) == 1  # throttled: less than 5 s since the last line
    clock.sleep(1.0)
    bar.tick()
    assert len(lines) == 2 and "elapsed 5s" in lines[1] and STAMP.match(lines[1])


def test_heartbeat_says_how_long_the_current_cell_has_been_running():
    clock, lines = FakeClock(), []
    bar = LineProgress(lines.append, interval=5.0, min_gap=1.0, clock=clock)
    overall, group = bar.add("all cells", 10), bar.add("model / pgd", 10)
    clock.sleep(1.0)
    bar.advance(overall)
    bar.update(group, description="model / pgd (eps 0.3)")
    bar.advance(group)
    assert "model / pgd (eps 0.3) 1/10 |" in lines[-1]  # just done: no "working"
    clock.sleep(7.0)
    bar.tick()
    assert "model / pgd (eps 0.3) 1/10, working 7s" in lines[-1]


def test_finished_work_stops_the_heartbeat_and_says_done():
    clock, lines = FakeClock(), []
    bar = LineProgress(lines.append, interval=5.0, clock=clock)
    task = bar.add("rendering", 2)
    clock.sleep(1)
    bar.advance(task)
    clock.sleep(1)
    bar.advance(task)
    assert lines[-1].endswith("done: rendering (2/2)")
    clock.sleep(60)
    count = len(lines)
    bar.tick()
    assert len(lines) == count


def test_eta_after_a_resume_counts_only_this_sessions_speed():
    clock = FakeClock(0.0)
    rate = SessionRate(100, clock())
    for _ in range(60):  # 60 cells read back from the earlier session in 0.6 s
        clock.sleep(0.01)
        rate.advance(1, clock(), reused=True)
    for _ in range(10):  # then 10 cells computed, 2 s each
        clock.sleep(2.0)
        rate.advance(1, clock())
    # 30 cells left at 2 s each; a rate over all 70 cells (20.6 s) would say about 9 s
    assert rate.remaining(clock()) == pytest.approx(60.0)
    clock.sleep(5.0)  # counts down while the next cell runs
    assert rate.remaining(clock()) == pytest.approx(55.0)
    assert SessionRate(10, 0.0).remaining(1.0) is None  # no fresh work yet: unknown


def test_log_lines_after_a_resume_show_the_reused_count_and_an_honest_eta():
    clock, lines = FakeClock(), []
    bar = LineProgress(lines.append, interval=5.0, clock=clock)
    overall = bar.add("all cells", 270)
    for _ in range(104):
        clock.sleep(0.001)
        bar.advance(overall, reused=True)
    assert lines == []  # reused cells are not a line each
    for _ in range(2):
        clock.sleep(1.2)
        bar.advance(overall)
    assert "all cells 106/270 (39%, 104 reused)" in lines[-1]
    assert "ETA 3m17s" in lines[-1]  # 164 cells x 1.2 s


def test_no_terminal_means_log_lines_even_without_quiet():
    with progress(False, tty=False) as bar:
        assert isinstance(bar, LineProgress)
    with progress(True, tty=True) as bar:
        assert isinstance(bar, LineProgress)


def _render80(done: int, reused: int) -> list[str]:
    clock = FakeClock(0.0)
    console = Console(file=io.StringIO(), width=80, height=24, color_system=None)
    screen = Console(file=io.StringIO(), width=80, height=24, record=True, color_system=None)
    with rich_progress(console=console, clock=clock, auto_refresh=False) as p:
        bar = _RichProgress(p, clock)
        overall = bar.add("all cells", 270)
        groups = [bar.add(f"mnist-cnn+detector / apgd-ce-linf-{i}", 12) for i in range(22)]
        for i in range(done):
            clock.sleep(0.01 if i < reused else 1.0)
            bar.advance(overall, reused=i < reused)
            label = f"mnist-cnn+detector(pool1) / apgd-ce-linf (eps 0.3, batch {i}) long description"
            bar.update(groups[i % 22], description=label)
            bar.advance(groups[i % 22], reused=i < reused)
        screen.print(p.get_renderable())  # what the terminal shows now
    return [line for line in screen.export_text().splitlines() if line.strip()]


def test_rich_bars_fit_80_columns_one_overall_bar_and_the_current_one():
    lines = _render80(done=104, reused=50)
    assert len(lines) == 2  # not 23 bars: the overall one and the current group
    for line in lines:
        assert len(line) <= 80
        assert re.search(r"\d+/\d+ +\d:\d\d:\d\d +ETA \d+(s|m\d\ds) *$", line), line  # counts and times whole
    assert "104/270" in lines[0] and lines[0].startswith("all cells")
    assert lines[1].startswith("mnist-cnn+detector") and "…" in lines[1]  # only the description is cut
    assert "ETA 2m46s" in lines[0]  # 166 cells left at this session's 1 s per cell


def test_counter_drives_a_task_from_done_total_callbacks():
    clock, lines = FakeClock(), []
    bar = LineProgress(lines.append, interval=5.0, min_gap=0.0, clock=clock)
    report = counter(bar, "rendering views")
    for i in range(1, 4):
        clock.sleep(1.0)
        report(i, 3)
    assert any("rendering views 2/3" in line for line in lines)
    assert lines[-1].endswith("done: rendering views (3/3)")


def test_log_counter_is_throttled(caplog):
    clock = FakeClock()
    logger = logging.getLogger("evasion.test_progress")
    report = log_counter(logger, "rendering", interval=5.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for i in range(1, 21):  # 20 views, 1 s each: a line every 5 s and one at the end
            clock.sleep(1.0)
            report(i, 20)
    messages = [r.getMessage() for r in caplog.records]
    assert 4 <= len(messages) <= 6, messages
    assert not STAMP.match(messages[0])  # logging adds its own time stamp
    assert messages[-1] == "done: rendering (20/20)"


def test_building_icub_sim_reports_progress_by_default(monkeypatch, tmp_path, caplog):
    from evasion.datasets import _render, icub_sim

    monkeypatch.setenv("EVASION_CACHE", str(tmp_path))
    monkeypatch.setattr(_render, "require_pybullet", lambda: None)
    seen: list[tuple[int, int]] = []

    class Stop(Exception):
        pass

    def fake_render(spec, index=None, progress=None):
        assert progress is not None  # a default progress callback is always given
        for i in range(1, 4):
            progress(i, 3)
            seen.append((i, 3))
        raise Stop

    monkeypatch.setattr(icub_sim, "render_views", fake_render)
    with caplog.at_level(logging.INFO, logger=icub_sim.logger.name), pytest.raises(Stop):
        icub_sim.build("icub-sim-quick")
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert any("rendering icub-sim-quick views" in r.getMessage() for r in caplog.records)


def test_datasets_build_command_shows_progress_lines(monkeypatch, tmp_path, capsys):
    from evasion.datasets import icub_sim

    monkeypatch.setenv("EVASION_THREADS", "1")

    def fake_build(name, *, force=False, progress=None):
        assert progress is not None
        for i in range(1, 6):
            progress(i, 5)
        path = Path(tmp_path / f"{name}.npz")
        path.write_bytes(b"x")
        return path, {"sha256": "0" * 64, "bytes": 1}

    monkeypatch.setattr(icub_sim, "build", fake_build)
    assert main(["datasets", "build", "icub-sim", "--quick", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"^\d\d:\d\d:\d\d done: rendering icub-sim-quick views \(5/5\)$", captured.err, re.M)
    assert "icub-sim-quick:" in captured.out
