"""The Ray engine: cells as Ray tasks on a local 2-CPU instance give the local engine's records."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from evasion import attacks, datasets, evaluate, models
from evasion.cli.main import main
from evasion.errors import MissingDependencyError
from evasion.evaluation import AttackSpec, ProgressEvent
from evasion.store import RunStore

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    torch.set_num_threads(before)


def specs() -> list[AttackSpec]:
    return [
        AttackSpec(attacks.DeepFool(steps=10), "l2", [0.5, 1.0]),
        AttackSpec(attacks.PGD(steps=5), "linf", [0.05, 0.1, 0.2]),
        AttackSpec(attacks.PGD(steps=5), "l2", [0.5, 1.0]),
    ]


class Stop(Exception):
    pass


def test_ray_engine_equals_local_engine_and_resumes_from_the_store(local_ray, tmp_path):
    from evasion.engines import RayEngine

    model = {"mlp": models.load("digits-mlp")}
    data = datasets.load("digits", split="test").head(48)
    local = evaluate(model, data, specs(), batch_size=16)
    remote = evaluate(model, data, specs(), batch_size=16, engine=RayEngine())
    assert remote.records == local.records

    def stop_after_5(event: ProgressEvent) -> None:
        if event.kind == "cell" and event.done >= 5:
            raise Stop

    with RunStore(tmp_path / "r") as store, pytest.raises(Stop):
        evaluate(model, data, specs(), batch_size=16, store=store, progress=stop_after_5)
    with RunStore(tmp_path / "r") as store:
        resumed = evaluate(model, data, specs(), batch_size=16, store=store, engine=RayEngine())
    assert resumed.records == local.records


def test_cli_engine_ray_writes_the_same_store(local_ray, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[run]\nbatch_size = 10\n[data]\nname = 'digits'\nsamples = 30\n[[models]]\nname = 'digits-cnn'\n"
        "[[attacks]]\nattack = 'pgd'\nnorm = 'linf'\nepsilons = [0.05, 0.1]\nparams = { steps = 4 }\n"
    )
    for engine in ("local", "ray"):
        argv = [
            "evaluate",
            str(cfg),
            "--out",
            str(tmp_path / engine),
            "--engine",
            engine,
            "--quiet",
            "--no-report",
        ]
        assert main(argv) == 0
    rows = []
    for engine in ("local", "ray"):
        with sqlite3.connect(tmp_path / engine / "results.sqlite") as db:
            rows.append(db.execute("SELECT * FROM records ORDER BY attack, epsilon, idx").fetchall())
    assert rows[0] == rows[1]


def test_missing_ray_is_a_clear_error(monkeypatch):
    import evasion.engines.ray as ray_engine

    def missing():  # type: ignore[no-untyped-def]
        raise MissingDependencyError("ray", "distributed", "--engine ray")

    monkeypatch.setattr(ray_engine, "import_ray", missing)
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(MissingDependencyError, match="evasion\\[distributed\\]"):
        evaluate(models.load("digits-mlp"), (x, y), specs()[1], engine=ray_engine.RayEngine())


def test_cells_ask_for_a_gpu_only_when_the_models_are_on_cuda():
    from types import SimpleNamespace

    from evasion.engines.ray import RayEngine

    class OnDevice:
        def __init__(self, kind: str) -> None:
            self.device = SimpleNamespace(type=kind)

    cpu = SimpleNamespace(models={"m": OnDevice("cpu")})
    gpu = SimpleNamespace(models={"m": OnDevice("cpu"), "g": OnDevice("cuda")})
    assert RayEngine().resources(cpu) == {"num_cpus": 1.0, "num_gpus": 0.0}  # type: ignore[arg-type]
    assert RayEngine().resources(gpu) == {"num_cpus": 1.0, "num_gpus": 1.0}  # type: ignore[arg-type]
    shared = RayEngine(cpus_per_task=2, gpus_per_task=0.25).resources(gpu)  # type: ignore[arg-type]
    assert shared == {"num_cpus": 2, "num_gpus": 0.25}


def test_bad_resource_requests_are_one_line_errors():
    from evasion.engines.ray import RayEngine
    from evasion.errors import ConfigError

    with pytest.raises(ConfigError, match="gpus_per_task must be a number >= 0"):
        RayEngine(gpus_per_task=-1)
    with pytest.raises(ConfigError, match="cpus_per_task must be a number >= 0"):
        RayEngine(cpus_per_task="two")  # type: ignore[arg-type]
