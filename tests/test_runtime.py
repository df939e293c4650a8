"""The commands' thread policy: explicit counts win, the default follows the free CPUs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from evasion import runtime
from evasion.cli.common import environment
from evasion.cli.main import build_parser, main
from evasion.errors import ConfigError


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    runtime.restore()
    torch.set_num_threads(before)


def test_free_threads_rounds_the_idle_cpus_and_keeps_one():
    assert runtime.free_threads(2, 0.0) == 2
    assert runtime.free_threads(2, 0.4) == 2
    assert runtime.free_threads(2, 0.6) == 1
    assert runtime.free_threads(2, 3.0) == 1
    assert runtime.free_threads(8, 2.2) == 6


def test_available_cpus_is_the_affinity_mask():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert runtime.available_cpus() == expected


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_bad_counts_are_config_errors(value):
    with pytest.raises(ConfigError, match="EVASION_THREADS must be a positive integer"):
        runtime.parse_threads(value, "EVASION_THREADS")


def test_flag_wins_over_the_environment():
    policy = runtime.configure("1", {runtime.ENV_VAR: "2"})
    assert (policy.threads, policy.source, torch.get_num_threads()) == (1, "--threads", 1)
    policy = runtime.configure(None, {runtime.ENV_VAR: "2"})
    assert (policy.threads, policy.source, torch.get_num_threads()) == (2, "EVASION_THREADS", 2)
    assert not policy.adaptive and runtime.rebalance(now=1e12) is None  # fixed counts never move


def test_default_takes_the_cpus_other_processes_leave(monkeypatch):
    monkeypatch.setattr(runtime, "available_cpus", lambda: 4)
    monkeypatch.setattr(runtime, "busy_elsewhere", lambda seconds=0.1: 1.2)
    policy = runtime.configure(None, {})
    assert (policy.threads, policy.source, policy.cpus) == (3, "auto", 4)
    assert torch.get_num_threads() == 3
    assert "3 of 4 CPUs" in policy.describe()


def test_adaptive_policy_follows_the_load_between_work_units(monkeypatch):
    monkeypatch.setattr(runtime, "available_cpus", lambda: 2)
    monkeypatch.setattr(runtime, "busy_elsewhere", lambda seconds=0.1: 0.0)
    policy = runtime.configure(None, {})
    assert policy.threads == 2
    start = runtime._state["time"]
    monkeypatch.setattr(runtime, "_busy_between", lambda a, b: 1.0)  # a job starts beside us
    assert runtime.rebalance(now=start + 1) is None  # too soon: not measured
    assert runtime.rebalance(now=start + runtime.RECHECK_SECONDS) == 1
    assert torch.get_num_threads() == 1 and runtime.active().threads == 1
    monkeypatch.setattr(runtime, "_busy_between", lambda a, b: 0.1)  # it ended
    assert runtime.rebalance(now=start + 2 * runtime.RECHECK_SECONDS) == 2
    assert torch.get_num_threads() == 2


def test_measured_load_excludes_our_own_cpu_time():
    a = runtime._Sample((0.0, 0.0), own=0.0, wall=0.0)
    cpus = runtime.available_cpus()
    # every CPU fully busy for 1 s, and this process used 1 CPU-second of it
    b = runtime._Sample((100.0 * cpus, 100.0 * cpus), own=1.0, wall=1.0)
    assert runtime._busy_between(a, b) == pytest.approx(cpus - 1.0)
    assert runtime._busy_between(a, runtime._Sample(None, 0.0, 1.0)) is None


def test_interop_already_fixed_is_not_an_error(monkeypatch):
    def refuse(n):
        raise RuntimeError("Error: cannot set number of interop threads after parallel work has started")

    monkeypatch.setattr(torch, "get_num_interop_threads", lambda: 4)
    monkeypatch.setattr(torch, "set_num_interop_threads", refuse)
    assert runtime.configure("1", {}).threads == 1


def test_a_fresh_process_gets_one_interop_thread():
    code = "from evasion import runtime; import torch; runtime.configure('1', {}); print(torch.get_num_interop_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "1"


def test_threads_option_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--threads", "2", "zoo", "list"]).threads == "2"
    assert parser.parse_args(["zoo", "list", "--threads", "3"]).threads == "3"
    assert parser.parse_args(["reproduce", "icub", "--threads", "1"]).threads == "1"
    assert parser.parse_args(["zoo", "list"]).threads is None


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["zoo", "list", "--threads", "0"], None, "--threads must be a positive integer"),
        (["--threads", "many", "zoo", "list"], None, "--threads must be a positive integer"),
        (["zoo", "list"], "lots", "EVASION_THREADS must be a positive integer"),
    ],
)
def test_bad_thread_counts_exit_2_with_one_line(argv, env, words, monkeypatch, capsys):
    if env is not None:
        monkeypatch.setenv(runtime.ENV_VAR, env)
    else:
        monkeypatch.delenv(runtime.ENV_VAR, raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_commands_apply_the_policy_and_restore_it(monkeypatch, capsys):
    monkeypatch.setenv(runtime.ENV_VAR, "1")
    torch.set_num_threads(2)
    seen = {}
    import evasion.cli.listing as listing

    def spy(args):
        seen["threads"] = torch.get_num_threads()
        seen["env"] = environment(torch.device("cpu"))
        return 0

    monkeypatch.setattr(listing, "_zoo_list", spy)
    assert main(["zoo", "list"]) == 0
    assert seen["threads"] == 1
    assert seen["env"]["torch_threads"] == "1" and seen["env"]["thread_policy"] == "1 (EVASION_THREADS)"
    assert torch.get_num_threads() == 2 and runtime.active() is None  # restored after the command


def test_workers_copy_the_drivers_count_but_the_driver_is_left_alone():
    from evasion.evaluation.plan import Context

    ctx = Context({}, torch.zeros(1), torch.zeros(1), {}, {}, 1, 0, threads=1)
    torch.set_num_threads(2)
    ctx.use_threads()  # in the driver: the policy decides
    assert torch.get_num_threads() == 2
    Context({}, torch.zeros(1), torch.zeros(1), {}, {}, 1, 0, threads=1, driver=-1).use_threads()
    assert torch.get_num_threads() == 1  # in a worker process: the driver's count


_FAULTS = """
import resource, sys, torch
from evasion import runtime
if sys.argv[1] == "keep":
    assert runtime.keep_freed_memory()
def step():  # buffers of 8-16 MB allocated, written and freed in a mixed order, as an attack step does
    a = torch.empty(4 << 20).fill_(1.0); b = torch.empty(3 << 20).fill_(2.0); c = a[: 3 << 20] + b
    del a; d = torch.empty(2 << 20).fill_(3.0); return float(c[0] + d[0])
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(60):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc mallopt")
def test_keep_freed_memory_stops_the_page_faults_of_reallocated_tensors():
    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip().splitlines()[-1])

    default, kept = faults("default"), faults("keep")
    # kept: after the first step the 60 steps reuse the heap (at most ~2 blocks of 4 KB pages fault);
    # glibc's own default faults more (how much depends on its adaptive threshold: 12,000-490,000 here)
    assert kept <= 8192 < default or kept < default / 4
