"""How many CPU threads the `evasion` commands give torch, and why.

The policy (applied once by :func:`configure`, before a command runs):

* **Explicit wins.** ``--threads N`` (any command), else the ``EVASION_THREADS`` environment
  variable, fixes N intra-op threads for the whole run. A value that is not a positive integer
  is a one-line error (exit 2).
* **Otherwise: the CPUs that are free.** The ceiling is the CPUs this process may use
  (``os.sched_getaffinity``, else ``os.cpu_count``). From it we subtract the CPUs other
  processes keep busy, measured over a short window (0.1 s of ``/proc/stat``, our own CPU time
  taken out; without ``/proc/stat``, the 1-minute load average), rounded: at least one thread.
  During an evaluation the measure is repeated every :data:`RECHECK_SECONDS` between cells
  (:func:`rebalance`, called from the progress reporting), so a job started beside us lowers our
  thread count and its end raises it again.
* **One inter-op thread.** The commands run one computation at a time; a pool of inter-op
  threads only competes with the intra-op ones.

Why not simply "all CPUs": torch's OpenMP threads spin-wait at the end of every parallel region.
When another CPU-bound process shares the cores, our second thread spins on a CPU the other
process needs, and every region waits for the descheduled thread. Measured on the 2-core CI
machine (a 40-step PGD on 200 mnist-cnn inputs; other jobs kept the load at 2-5, so absolute
numbers are noisy): alone beside the usual background, 1 thread 0.94-1.09 s, 2 threads
5.1-6.2 s; with a busy loop added, 1 thread 1.8-2.8 s, 2 threads 3.0-8.3 s. ``OMP_WAIT_POLICY=
PASSIVE`` also removes most of the loss (2 threads: 1.3-1.5 s and 1.9-2.2 s) but OpenMP reads
it only when torch is imported, before any command code runs, so it cannot be the policy of
a command; users may still export it. The thread count does not change results: the attacks
give identical tensors with 1 and 2 threads, and distributed workers copy the driver's count.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from .errors import ConfigError

__all__ = [
    "ENV_VAR",
    "RECHECK_SECONDS",
    "ThreadPolicy",
    "active",
    "auto_batch_size",
    "available_cpus",
    "busy_elsewhere",
    "configure",
    "free_threads",
    "keep_freed_memory",
    "parse_threads",
    "rebalance",
    "resolve_device",
    "restore",
]

#: the environment variable that fixes the thread count (``--threads`` wins over it)
ENV_VAR = "EVASION_THREADS"
#: seconds between two load measurements of an adaptive policy
RECHECK_SECONDS = 10.0
#: length of the first load measurement
PROBE_SECONDS = 0.1


@dataclass(frozen=True)
class ThreadPolicy:
    """The thread count in force and where it came from (recorded with a run's environment)."""

    threads: int
    source: str  # "--threads", "EVASION_THREADS" or "auto"
    cpus: int  # CPUs this process may use
    busy: float = 0.0  # CPUs other processes kept busy at the last measurement (auto only)
    previous: int = 0  # torch's count before configure(), restored by restore()

    @property
    def adaptive(self) -> bool:
        return self.source == "auto"

    def describe(self) -> str:
        if self.adaptive:
            return f"{self.threads} of {self.cpus} CPUs (auto: {self.busy:.1f} busy elsewhere)"
        return f"{self.threads} ({self.source})"

    def facts(self) -> dict[str, str]:
        return {"torch_threads": str(torch.get_num_threads()), "thread_policy": self.describe()}


_active: ThreadPolicy | None = None
#: time and CPU sample of the last measurement of an adaptive policy
_state: dict[str, Any] = {}


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def parse_threads(value: object, where: str) -> int:
    """A positive thread count, or a one-line :class:`ConfigError` naming ``where`` it came from."""
    text = str(value).strip()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or isinstance(value, bool):
        raise ConfigError(f"{where} must be a positive integer (a number of threads), got {value!r}")
    return n


def _cpu_ticks(cpus: set[int] | None) -> tuple[float, float] | None:
    """(busy, total) clock ticks of ``cpus`` since boot from ``/proc/stat``; None without it."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        fields = [float(v) for v in rest.split()]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        used = sum(fields[:8]) - idle  # user nice system (idle iowait) irq softirq steal
        busy, total = busy + used, total + used + idle
    return (busy, total) if total > 0 else None


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return None


@dataclass(frozen=True)
class _Sample:
    ticks: tuple[float, float] | None
    own: float  # this process's CPU seconds (all threads)
    wall: float


def _sample() -> _Sample:
    return _Sample(_cpu_ticks(_affinity()), time.process_time(), time.monotonic())


def _busy_between(a: _Sample, b: _Sample) -> float | None:
    """CPUs other processes kept busy between two samples (None when it cannot be measured)."""
    if a.ticks is None or b.ticks is None:
        return None
    busy, total = b.ticks[0] - a.ticks[0], b.ticks[1] - a.ticks[1]
    wall = b.wall - a.wall
    if total <= 0 or wall <= 0:
        return None
    cpus = len(_affinity() or ()) or available_cpus()
    all_busy = cpus * busy / total  # CPUs busy, everyone included
    return max(0.0, all_busy - (b.own - a.own) / wall)


def busy_elsewhere(seconds: float = PROBE_SECONDS) -> float:
    """CPUs (of ours) that other processes keep busy, measured over ``seconds``.

    Falls back to the 1-minute load average (nothing of ours runs yet) without ``/proc/stat``."""
    a = _sample()
    time.sleep(seconds)
    measured = _busy_between(a, _sample())
    if measured is not None:
        return measured
    try:
        return float(os.getloadavg()[0])
    except OSError:  # pragma: no cover - no load average either
        return 0.0


def free_threads(cpus: int, busy: float) -> int:
    """Threads for ``cpus`` CPUs of which ``busy`` are in use elsewhere: the free ones, at least 1."""
    return max(1, min(cpus, math.floor(cpus - busy + 0.5)))


def _one_interop_thread() -> None:
    try:
        if torch.get_num_interop_threads() != 1:
            torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed: parallel work has started in this process
        pass


def configure(flag: object = None, environ: Mapping[str, str] | None = None) -> ThreadPolicy:
    """Decide and apply the thread count of a command (see the module docstring).

    ``flag``: the ``--threads`` value (None when not given); ``environ``: default ``os.environ``.
    """
    global _active
    env = os.environ if environ is None else environ
    cpus = available_cpus()
    previous = torch.get_num_threads()
    if flag is not None:
        policy = ThreadPolicy(parse_threads(flag, "--threads"), "--threads", cpus, previous=previous)
    elif env.get(ENV_VAR, "").strip():
        policy = ThreadPolicy(parse_threads(env[ENV_VAR], ENV_VAR), ENV_VAR, cpus, previous=previous)
    else:
        busy = busy_elsewhere()
        policy = ThreadPolicy(free_threads(cpus, busy), "auto", cpus, round(busy, 2), previous)
    _one_interop_thread()
    torch.set_num_threads(policy.threads)
    keep_freed_memory()  # every command allocates the same tensors step after step
    _active = policy
    _state.clear()
    _state.update(time=time.monotonic(), sample=_sample())
    return policy


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`keep_freed_memory` sets
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
ALLOCATOR_SETTINGS = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 256 << 20}


@functools.cache  # process-wide settings: applied once (find_library may run ldconfig)
def keep_freed_memory() -> bool:
    """Let this process reuse freed tensor memory instead of handing it back to the OS (glibc).

    By default glibc serves every allocation above 128 KB-32 MB with a fresh ``mmap`` and returns
    it on ``free``; an attack allocates the same activations and gradients every step, so each
    step page-faults its memory anew (thousands of faults per forward+backward, measured on
    EfficientNet-Lite0). Raising the mmap and trim thresholds keeps freed blocks in the heap for
    the next step (peak memory may stay higher, up to ~1 GB kept free; single blocks of 32 MB and
    more are still mapped and unmapped each time: glibc's ceiling). Returns whether the
    settings were applied: False where the C library has no ``mallopt`` (macOS, Windows, musl).
    Results do not change; only where the memory comes from.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is None:
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        return all(mallopt(param, value) == 1 for param, value in ALLOCATOR_SETTINGS.items())
    except OSError:
        return False


def active() -> ThreadPolicy | None:
    """The policy :func:`configure` applied in this process (None: library use, torch's setting)."""
    return _active


def rebalance(now: float | None = None) -> int | None:
    """Re-measure the load and adjust an adaptive policy's thread count; call between work units.

    At most once per :data:`RECHECK_SECONDS`; returns the new count when it changed, else None.
    Must run on the thread that runs torch (OpenMP settings are per thread)."""
    global _active
    policy = _active
    if policy is None or not policy.adaptive:
        return None
    t = time.monotonic() if now is None else now
    if t - float(_state.get("time", -math.inf)) < RECHECK_SECONDS:
        return None
    current, before = _sample(), _state.get("sample")
    _state.update(time=t, sample=current)
    busy = _busy_between(before, current) if isinstance(before, _Sample) else None
    if busy is None:
        return None
    threads = free_threads(policy.cpus, busy)
    _active = replace(policy, busy=round(busy, 2), threads=threads)
    if threads == torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    return threads


def restore() -> None:
    """Undo :func:`configure` (for commands run in-process, e.g. from tests)."""
    global _active
    if _active is not None and _active.previous:
        torch.set_num_threads(_active.previous)
    _active = None
    _state.clear()


def _devices_here() -> list[str]:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """A device that exists on this machine, or a one-line ConfigError naming the ones there are.

    ``"auto"`` picks the first CUDA device when there is one; ``None`` stays ``None`` (the
    caller's default). ``cuda`` means the current CUDA device; ``cuda:7`` on a machine with one
    GPU is refused here rather than deep inside torch at the first tensor copy.
    """
    if device is None:
        return None
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"unknown device {device!r}; use auto, cpu, cuda or cuda:N (here: {', '.join(_devices_here())})"
        ) from None
    here = ", ".join(_devices_here())
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device {str(device)!r} requested but this machine has no CUDA device (here: {here})"
            )
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {str(device)!r} does not exist; devices here: {here}")
    elif dev.type == "mps" and "mps" not in _devices_here():
        raise ConfigError(f"device {str(device)!r} is not available; devices here: {here}")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {str(device)!r} is not supported; devices here: {here}")
    return dev


#: batch sizes tried by :func:`auto_batch_size` on the CPU (GPUs double from the first one)
BATCH_CANDIDATES = (16, 32, 64, 128, 256, 512)


def _fwd_bwd(model: torch.nn.Module, x: torch.Tensor) -> None:
    xg = x.detach().clone().requires_grad_(True)
    out = model(xg)
    (g,) = torch.autograd.grad(out.float().logsumexp(1).sum(), xg)
    del g


def auto_batch_size(
    model: torch.nn.Module,
    example: torch.Tensor,
    *,
    candidates: tuple[int, ...] = BATCH_CANDIDATES,
    largest: int = 4096,
    limit: int | None = None,
) -> int:
    """The attack batch size for ``model`` on this machine, measured.

    CPU: the candidate with the most images per second of a forward+backward pass w.r.t. the
    input (one timed pass each after a warm-up; the search stops once throughput falls twice
    below the best). CUDA: the largest power of two from ``candidates[0]`` up to ``largest``
    whose forward+backward fits in free memory (an out-of-memory error ends the search).
    ``example`` is one input or a batch of inputs of the model's shape (on any device);
    ``limit`` caps the answer (e.g. at the number of samples). Machine-dependent by design:
    store the number it returns (``evasion evaluate`` records it in the run) to reproduce a run.
    """
    x1 = example if example.dim() >= 2 and example.shape[0] >= 1 else example[None]
    x1 = x1[:1]
    device = next((p.device for p in model.parameters()), x1.device)
    x1 = x1.to(device)
    cap = min(largest, limit) if limit is not None else largest
    if device.type == "cuda":
        best, b = 0, candidates[0]
        while b <= cap:
            try:
                _fwd_bwd(model, x1.expand(b, *x1.shape[1:]))
                torch.cuda.synchronize(device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
            best, b = b, b * 2
        return max(best, 1)
    sizes = [b for b in candidates if b <= cap] or [max(1, cap)]
    _fwd_bwd(model, x1.expand(sizes[0], *x1.shape[1:]))  # warm-up (allocator, kernels)
    best, best_rate, worse = sizes[0], 0.0, 0
    for b in sizes:
        xb = x1.expand(b, *x1.shape[1:])
        start = time.perf_counter()
        _fwd_bwd(model, xb)
        rate = b / max(time.perf_counter() - start, 1e-9)
        if rate > best_rate:
            best, best_rate, worse = b, rate, 0
        elif rate < 0.9 * best_rate:
            worse += 1
            if worse == 2:
                break
    return best
