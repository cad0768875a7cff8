"""Evaluations per minute: executor=ray with N CPU workers versus the serial executor, on the digits experiment.

    python experiments/bench/ray_bench.py                         # fitness_samples 200 (the experiment) and 359
    python experiments/bench/ray_bench.py --workers 2 --repeats 5 --generations 8
    python experiments/bench/ray_bench.py --experiment jp_math_mini --generations 2 --repeats 3 --skip-default-threads

Both executors evaluate the same genomes (random, in the experiment's CMA-ES population size) through
`executor.map`, exactly as the search loop does; worker start-up is timed separately and excluded. Serial is
measured with 1 torch thread (what each Ray worker uses, and what bitwise-equal metrics need) and with the
machine's default thread count (what `executor=serial` gets out of the box). Reported per setting: median
evaluations/minute over repeats, the ratio ray / serial(1 thread) against the ideal N x, and where the rest went:

  ray wall = serial wall / N                       (ideal)
           + (sum of worker eval times - sum of serial eval times) / N   (evaluations slower in parallel: cores
                                                     and memory bandwidth shared with each other and other jobs)
           + generations x (ceil(P / N) - P / N) x mean eval time    (a population of P leaves workers idle
                                                     in each generation's last round; the loop waits for it)
           + the remainder                                            (dispatch: transfer, scheduling, driver)

The digits evaluation takes tens of ms, so fixed per-candidate costs weigh a lot; fitness_samples=359 (the
whole validation split) is a little heavier, and --experiment jp_math_mini (greedy generation with a small Llama on
2 x 200 prompts, about 0.5-2 s per candidate) makes dispatch costs negligible. CPU seconds (driver and
workers, via psutil) are printed too: unlike wall time they do not depend on what else runs on the machine.
Numbers on a shared machine are noisy (and with the kernel's autogroup scheduler a login session gets one share of
the CPU however many processes it runs): the load average is printed before and after; medians are reported.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from functools import partial

from evomerge.offline import set_offline_env

set_offline_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def timed_map(executor, generations, pids: list[int]) -> tuple[float, list, float]:
    """Wall time, outcomes, and CPU seconds spent by `pids` (driver and workers) during the map."""
    c0, t0 = cpu_seconds(pids), time.perf_counter()
    outs = [o for recipes in generations for o in executor.map(recipes)]
    return time.perf_counter() - t0, outs, cpu_seconds(pids) - c0


def bench(fitness_samples: int | None, args) -> dict:
    import ray

    from evomerge import evaluator as evaluators_pkg
    from evomerge import executor as executor_pkg
    from evomerge import models as models_pkg
    from evomerge import optimizer as optimizer_pkg
    from evomerge import space as space_pkg
    from evomerge.executor.ray import RayExecutor
    from evomerge.executor.serial import SerialExecutor
    from evomerge.executor.worker import Worker

    overrides = [f"experiment={args.experiment}"]
    if fitness_samples is not None:
        overrides.append(f"evaluator.digits.fitness_samples={fitness_samples}")
    cfg = compose(overrides)
    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"])
    space = space_pkg.build(cfg["space"], cfg["merge"], pool, seed=0)
    popsize = len(optimizer_pkg.build(cfg["optimizer"], space.xl, space.xu, 1, 0, None, space.var_types).ask())
    rng = np.random.default_rng(0)
    generations = [[space.decode(x) for x in rng.uniform(space.xl, space.xu, (popsize, space.dim))]
                   for _ in range(args.generations)]
    n_evals = popsize * args.generations
    serial = SerialExecutor(Worker(pool, evaluators_pkg.build(cfg["evaluator"], pool.tokenizer, seed=0)))

    default_threads = torch.get_num_threads()
    rows: dict[str, list] = {"serial_1t": [], "serial_default": [], "ray": []}
    evals: dict[str, list] = {"serial_1t": [], "ray": []}
    cpu: dict[str, list] = {"serial_1t": [], "ray_workers": [], "ray_driver": []}
    t0 = time.perf_counter()
    ex = RayExecutor(pool, partial(executor_pkg.make_worker, cfg["evaluator"], 0, False), num_workers=args.workers,
                     num_cpus=1)
    startup = time.perf_counter() - t0
    handle = ex.actors[0]
    ray.get(handle.pid.remote())
    rtt = []
    for _ in range(50):  # a no-op round trip to one worker: the floor of per-candidate dispatch cost
        t = time.perf_counter()
        ray.get(handle.pid.remote())
        rtt.append(time.perf_counter() - t)
    ex.map(generations[0])  # warm-up (first-call allocations in each worker)
    torch.set_num_threads(1)
    serial.map(generations[0])
    reference = None
    for _ in range(args.repeats):  # interleaved, so slow phases of the shared machine hit every setting
        torch.set_num_threads(1)
        wall, outs, c = timed_map(serial, generations, [os.getpid()])
        rows["serial_1t"].append(wall)
        cpu["serial_1t"].append(c)
        evals["serial_1t"].append(sum(o.wall_time for o in outs))
        reference = [o.metrics for o in outs]
        if not args.skip_default_threads:
            torch.set_num_threads(default_threads)
            rows["serial_default"].append(timed_map(serial, generations, [os.getpid()])[0])
        c0 = cpu_seconds([os.getpid()])
        wall, outs, c = timed_map(ex, generations, list(ex.pids))
        cpu["ray_driver"].append(cpu_seconds([os.getpid()]) - c0)
        cpu["ray_workers"].append(c)
        rows["ray"].append(wall)
        evals["ray"].append(sum(o.wall_time for o in outs))
        assert [o.metrics for o in outs] == reference, "ray metrics differ from serial (1 thread)"
    ex.close()
    torch.set_num_threads(default_threads)
    rows = {k: v for k, v in rows.items() if v}
    med = {k: statistics.median(v) for k, v in rows.items()}
    med_eval = {k: statistics.median(v) for k, v in evals.items()}
    return {"experiment": args.experiment, "fitness_samples": fitness_samples, "popsize": popsize, "n_evals": n_evals, "startup": startup,
            "rtt_ms": 1000 * statistics.median(rtt), "wall": med, "eval_sum": med_eval,
            "default_threads": default_threads, "cpu": {k: statistics.median(v) for k, v in cpu.items()}, "spread": {k: (min(v), max(v)) for k, v in rows.items()}}


def report(r: dict, workers: int) -> None:
    n, w, e = r["n_evals"], r["wall"], r["eval_sum"]
    per_min = {k: 60 * n / v for k, v in w.items()}
    what = (f"digits, fitness_samples={r['fitness_samples']} per task ({3 * r['fitness_samples']} images per "
            f"candidate)" if r["fitness_samples"] else r["experiment"])
    print(f"\n## {what}, population {r['popsize']}, {n} evaluations per repeat")
    print(f"serial, one evaluation: {1000 * e['serial_1t'] / n:.1f} ms (1 thread); Ray worker start-up "
          f"{r['startup']:.1f} s (once per run, excluded); no-op round trip to a worker {r['rtt_ms']:.2f} ms")
    print("| executor | evals/min (median) | wall s min..max | ratio to serial 1 thread |")
    print("|---|---|---|---|")
    labels = {"serial_1t": "serial, 1 thread", "serial_default": f"serial, {r['default_threads']} threads (default)",
              "ray": f"ray, {workers} workers x 1 CPU"}
    for k, label in labels.items():
        if k not in w:
            continue
        lo, hi = r["spread"][k]
        print(f"| {label} | {per_min[k]:.0f} | {lo:.2f}..{hi:.2f} | {w['serial_1t'] / w[k]:.2f}x |")
    ideal = w["serial_1t"] / workers
    slower = (e["ray"] - e["serial_1t"]) / workers
    gens, pop = n // r["popsize"], r["popsize"]
    tail = gens * (math.ceil(pop / workers) - pop / workers) * e["ray"] / n  # last round of a generation
    dispatch = w["ray"] - e["ray"] / workers - tail
    lost = w["ray"] - ideal
    print(f"ratio ray / serial(1 thread) = {w['serial_1t'] / w['ray']:.2f}x of an ideal {workers}x "
          f"(efficiency {100 * w['serial_1t'] / w['ray'] / workers:.0f}%); ray / serial(default threads) = "
          f"{w['serial_default'] / w['ray']:.2f}x" if "serial_default" in w else "")
    c = r["cpu"]
    print(f"CPU seconds per evaluation: serial {1000 * c['serial_1t'] / n:.1f} ms; Ray workers "
          f"{1000 * c['ray_workers'] / n:.1f} ms + driver {1000 * c['ray_driver'] / n:.1f} ms. With {workers} idle "
          f"cores the CPU-bound ceiling is about {workers * c['serial_1t'] / max(c['ray_workers'], 1e-9):.2f}x "
          f"before dispatch latency and the generation tail")
    print(f"where the rest went ({lost:.2f} s lost against the ideal {ideal:.2f} s per repeat): evaluations slower "
          f"in parallel {slower:+.2f} s ({e['ray'] / e['serial_1t']:.2f}x per evaluation); a population of {pop} "
          f"on {workers} workers leaves workers idle in each generation's last round {tail:+.2f} s; dispatch "
          f"(transfer, scheduling, driver) {dispatch:+.2f} s ({1000 * dispatch / n:.1f} ms per candidate)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--generations", type=int, default=6, help="populations per repeat")
    ap.add_argument("--experiment", default="digits", help="digits, or jp_math_mini (a heavier evaluation)")
    ap.add_argument("--fitness-samples", type=int, nargs="+", default=[200, 359], help="digits only")
    ap.add_argument("--skip-default-threads", action="store_true", help="skip serial with torch's default threads")
    args = ap.parse_args()
    if args.experiment != "digits":
        args.fitness_samples = [None]
    import ray

    from evomerge.executor.ray import init_local

    print(f"load average before: {os.getloadavg()}, cores: {os.cpu_count()}")
    init_local(num_cpus=args.workers, log_to_driver=False)  # as executor=ray starts a local instance
    try:
        results = [bench(fs, args) for fs in args.fitness_samples]
    finally:
        ray.shutdown()
    for r in results:
        report(r, args.workers)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
