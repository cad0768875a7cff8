"""executor=ray on one local Ray instance (num_cpus=2) started by this module: parallel equals serial, a finishing
worker takes the next candidate, killed workers are survived, the run directory has the same shape."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray  # the `ray` extra; CI installs it (a missing Ray fails here, loudly, rather than skipping)

from evomerge import evaluator as evaluators_pkg
from evomerge import executor as executor_pkg
from evomerge import models as models_pkg
from evomerge import space as space_pkg
from evomerge.executor.worker import Worker


def compose(zoo_root: Path, *overrides: str) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=["experiment=digits", f"paths.zoo={zoo_root}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


class ProbeWorker:
    """A real Worker with test hooks read from recipe.meta: sleep first, or kill its own process."""

    def __init__(self, inner: Worker):
        self.inner = inner

    def evaluate(self, recipe, split, indices):
        if recipe.meta.get("poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(recipe.meta.get("sleep", 0.0))
        out = self.inner.evaluate(recipe, split, indices)
        out.records["pid"] = [os.getpid()]
        out.records["nice"] = [os.nice(0)]
        return out


def make_probe_worker(evaluator_cfg, seed, pool, device):
    return ProbeWorker(executor_pkg.make_worker(evaluator_cfg, seed, False, pool, device))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Serial references with the workers' thread count (num_cpus=1): CPU kernels reduce in a thread-dependent
    order, so bitwise-equal metrics need equal thread counts (README, Scale-out)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_ray():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    from evomerge.executor.ray import init_local

    init_local(num_cpus=2, log_to_driver=False)  # started here, so executors reuse it and leave it running
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(zoo_root, digits_zoo):
    cfg = compose(zoo_root)
    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"])
    space = space_pkg.build(cfg["space"], cfg["merge"], pool, seed=0)
    worker = Worker(pool, evaluators_pkg.build(cfg["evaluator"], pool.tokenizer, seed=0))
    return cfg, pool, space, worker


@pytest.fixture(scope="class")
def probe_executor(local_ray, setup):
    """Two workers with test hooks. Class-scoped: they hold both CPUs of the test's Ray instance and must be
    gone before the end-to-end run starts its own."""
    from functools import partial

    from evomerge.executor.ray import RayExecutor

    cfg, pool, _, _ = setup
    ex = RayExecutor(pool, partial(make_probe_worker, cfg["evaluator"], 0), num_workers=2, num_cpus=1,
                     max_restarts=5)
    yield ex
    ex.close()


def population(space, n: int, seed: int = 0, **meta):
    rng = np.random.default_rng(seed)
    recipes = [space.decode(x) for x in rng.uniform(space.xl, space.xu, (n, space.dim))]
    for r in recipes:
        r.meta.update(meta)
    return recipes


class TestProbeWorkers:
    """Executor behaviour on two workers that wrap the real Worker with test hooks."""

    def test_parallel_equals_serial(self, setup, probe_executor):
        _, _, space, worker = setup
        recipes = population(space, 10)
        serial = [worker.evaluate(r) for r in recipes]
        parallel = probe_executor.map(recipes)
        assert [o.error for o in parallel] == [None] * 10
        assert [o.metrics for o in parallel] == [o.metrics for o in serial]  # exact, in population order
        assert len({o.records["pid"][0] for o in parallel}) == 2  # both workers took part
        assert {o.records["nice"][0] for o in parallel} == {os.nice(0)}  # not Ray's default nice 15
        # a subsample (multi-fidelity rung) goes through too and matches
        idx = [0, 3, 5, 7, 11]
        assert [o.metrics for o in probe_executor.map(recipes[:4], "fitness", idx)] == \
            [worker.evaluate(r, "fitness", idx).metrics for r in recipes[:4]]

    def test_finishing_worker_takes_next_candidate(self, setup, probe_executor):
        _, _, space, _ = setup
        recipes = population(space, 6, seed=1)
        recipes[0].meta["sleep"] = 1.5  # a straggler
        for r in recipes[1:]:
            r.meta["sleep"] = 0.05
        outs = probe_executor.map(recipes)
        slow_pid = outs[0].records["pid"][0]
        # dynamic dispatch: the other worker evaluated every fast candidate while the straggler ran
        # (static chunks of 3 would have put two fast ones behind the straggler)
        assert all(o.records["pid"][0] != slow_pid for o in outs[1:])

    def test_killed_worker_is_replaced_and_candidate_retried(self, setup, probe_executor):
        _, _, space, worker = setup
        recipes = population(space, 8, seed=2, sleep=0.3)
        victim = probe_executor.worker_pids()[0]
        restarts = sum(probe_executor.restarts)
        killer = threading.Timer(0.45, os.kill, (victim, signal.SIGKILL))  # mid-evaluation of its 2nd candidate
        killer.start()
        outs = probe_executor.map(recipes)
        killer.join()
        assert sum(probe_executor.restarts) == restarts + 1
        assert [o.error for o in outs] == [None] * 8  # the interrupted candidate was retried and succeeded
        assert [o.metrics for o in outs] == [worker.evaluate(r).metrics for r in recipes]
        pids = probe_executor.worker_pids()
        assert victim not in pids and None not in pids

    def test_candidate_that_kills_its_worker_twice_is_a_recorded_failure(self, setup, probe_executor):
        _, _, space, worker = setup
        recipes = population(space, 5, seed=3)
        recipes[2].meta["poison"] = True
        restarts = sum(probe_executor.restarts)
        outs = probe_executor.map(recipes)
        assert outs[2].metrics is None and outs[2].error.startswith("WorkerDied")
        assert sum(probe_executor.restarts) == restarts + 2  # died, retried once, died again
        ok = [0, 1, 3, 4]
        assert [outs[i].metrics for i in ok] == [worker.evaluate(recipes[i]).metrics for i in ok]
        assert all(o.error is None for o in probe_executor.map(recipes[:2]))  # the search goes on


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # rotary non-persistent buffers; tied embeddings
def test_pool_survives_the_object_store_round_trip(tmp_path, arch):
    """What an actor rebuilds from the packed pool merges and predicts bit for bit like the driver's pool, and the
    model skeleton that travels carries no weights."""
    import pickle

    import torch

    from evomerge.executor.ray import pack_pool, skeleton, unpack_pool
    from evomerge.merge.merger import Merger
    from evomerge.models.pool import ModelSpec, load_pool
    from evomerge.recipe import Recipe, Rule
    from evomerge.testing import tiny_causal_lm

    base = tiny_causal_lm(tmp_path / "base", arch=arch, seed=0)
    expert = tiny_causal_lm(tmp_path / "a", arch=arch, seed=1, perturb_from=base)
    pool = load_pool([ModelSpec("a", str(expert))], ModelSpec("base", str(base)))
    rebuilt = unpack_pool(pickle.loads(pickle.dumps(pack_pool(pool))), "cpu")
    recipe = Recipe(models=["a"], base="base", default=Rule("task_arithmetic", {"weight": [0.7]}))
    x = torch.tensor([[1, 5, 9, 22, 40, 41]])
    assert torch.equal(Merger(pool).apply(recipe)(x).logits, Merger(rebuilt).apply(recipe)(x).logits)
    weight_bytes = sum(t.numel() * t.element_size() for t in pool.state["base"].values())
    assert len(pickle.dumps(skeleton(pool.template))) < weight_bytes / 10


def test_bad_executor_config_fails_before_compute():
    with pytest.raises(ValueError, match="executor.kind: unknown executor 'rey'"):
        executor_pkg.check({"kind": "rey"})
    with pytest.raises(ValueError, match="executor.num_workers: expected a positive integer"):
        executor_pkg.check({"kind": "ray", "num_workers": 0})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_worker'\]"):
        executor_pkg.check({"kind": "ray", "num_worker": 2})
    with pytest.raises(ValueError, match="executor.num_gpus: expected a non-negative"):
        executor_pkg.check({"kind": "ray", "num_gpus": -1})


def test_workers_that_cannot_fit_are_refused(local_ray):
    from evomerge.executor.ray import count_workers

    assert count_workers(None, None, 1, 0) == 2  # null: as many as fit
    with pytest.raises(RuntimeError, match="has 2.0 CPUs and 0 GPUs, which fit 2 workers"):
        count_workers(None, 3, 1, 0)
    with pytest.raises(RuntimeError, match="fit 0 workers"):
        count_workers(None, None, 0, 1)  # no GPU here


@pytest.mark.slow
def test_search_with_ray_equals_serial_and_multirun(tmp_path, zoo_root, digits_zoo, local_ray):
    """A digits search: in-process executor=serial vs `-m seed=0,1 executor=ray` through the CLI, whose Hydra jobs
    connect to this module's Ray instance by its address. Seed 0 must match serial record for record."""
    from evomerge.run import run

    common = ["experiment=digits", "search.budget=12", "optimizer.popsize=6", "logger.progress_bar=false"]
    serial = tmp_path / "serial"
    run(compose(zoo_root, *common[1:]), serial)
    # OMP_NUM_THREADS=1: the driver scores the held-out table, with the thread count of the serial reference
    env = {**os.environ, "EVOMERGE_ZOO": str(zoo_root), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweep"
    address = ray.get_runtime_context().gcs_address  # this module's instance, not any other on the machine
    args = ["-m", "seed=0,1", *common, "executor=ray", f"executor.address={address}", "executor.num_workers=2",
            "executor.startup_timeout_s=180", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run([sys.executable, "-m", "evomerge", *args], capture_output=True, text=True, env=env,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ray_run = sweep / "0"

    def log(d):
        return [json.loads(line) for line in (d / "evaluations.jsonl").read_text().splitlines()]

    assert len(log(ray_run)) == 12
    for key in ("genome", "metrics", "recipe", "error"):
        assert [r[key] for r in log(ray_run)] == [r[key] for r in log(serial)], key
    finals = {k: json.loads((d / "final.json").read_text()) for k, d in (("serial", serial), ("ray", ray_run))}
    assert finals["ray"]["best"]["id"] == finals["serial"]["best"]["id"]
    assert finals["ray"]["final"] == finals["serial"]["final"]

    def shape(d):  # minus what the Hydra CLI adds to any run (its config copy and log file)
        return sorted(str(p.relative_to(d)) for p in d.rglob("*")
                      if not str(p.relative_to(d)).startswith(".hydra") and p.name not in ("evomerge.log", "config.resolved.yaml"))

    assert shape(ray_run) == shape(serial)
    # the second job ran with its own seed
    assert "seed: 1" in (sweep / "1" / ".hydra" / "config.yaml").read_text()
    seed1 = log(sweep / "1")
    assert len(seed1) == 12 and [r["genome"] for r in seed1] != [r["genome"] for r in log(serial)]
