"""SIGKILL the real CLI at random moments on the digits experiment, resume, and get exactly the uninterrupted result.

The kill moments are random (seeded from the clock and printed on failure, so a failure can be replayed with
EVOMERGE_KILL_SEED): the process dies while loading, merging, evaluating, appending to the log or writing a
checkpoint. After every kill the run directory must stay readable; after the last resume the result must equal
an uninterrupted run with the same seed, evaluation by evaluation.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evomerge.store import read_jsonl

pytestmark = [pytest.mark.faults, pytest.mark.slow]

ARGS = ["experiment=digits", "search.budget=30", "optimizer.popsize=6", "seed=1", "evaluator.digits.fitness_samples=90"]


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "evomerge", *ARGS, f"hydra.run.dir={run_dir}", *extra]


def _env(zoo: Path) -> dict:
    return {**os.environ, "EVOMERGE_ZOO": str(zoo), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def essence(records: list[dict]) -> list:
    return [(r["id"], r["generation"], r["genome"], r["metrics"], r["error"]) for r in records]


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path, zoo_root, digits_zoo):
    seed = int(os.environ.get("EVOMERGE_KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    env = _env(zoo_root)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = subprocess.Popen(_cmd(ref_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    kills = []
    for attempt in range(3):
        extra = ("resume=true",) if attempt else ()
        proc = subprocess.Popen(_cmd(run_dir, *extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # kill once the log has grown by a random number of records (0: during start-up), plus a random delay;
        # a resumed run first cuts the log back to its checkpoint, so count from there
        start = _lines(run_dir / "evaluations.jsonl")
        target = start + rng.randint(0, max(0, 30 - start - 1))
        delay = rng.uniform(0.0, 0.4)
        t0 = time.time()
        grown = False
        while proc.poll() is None and time.time() - t0 < 200:
            n = _lines(run_dir / "evaluations.jsonl")
            grown = grown or n != start or target == start
            if grown and n >= target:
                break
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append((target, round(delay, 3), _lines(run_dir / "evaluations.jsonl")))
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        # the run directory stays readable after every kill
        read_jsonl(run_dir / "evaluations.jsonl")
        read_jsonl(run_dir / "cache.jsonl")
        if (run_dir / "checkpoint.json").exists():
            json.loads((run_dir / "checkpoint.json").read_text())
        assert not list(run_dir.glob(".checkpoint.json.*.tmp.keep"))
    final = subprocess.run(_cmd(run_dir, "resume=true"), env=env, capture_output=True, text=True, timeout=400)
    assert final.returncode == 0, final.stderr[-3000:]
    out, err = ref.communicate(timeout=400)
    assert ref.returncode == 0, err[-3000:]

    why = f"kill seed {seed} (EVOMERGE_KILL_SEED), kills (target, delay, lines at kill) {kills}"
    assert essence(read_jsonl(run_dir / "evaluations.jsonl")) == essence(read_jsonl(ref_dir / "evaluations.jsonl")), why
    a, b = json.loads((run_dir / "final.json").read_text()), json.loads((ref_dir / "final.json").read_text())
    assert a["best"]["genome"] == b["best"]["genome"] and a["best"]["id"] == b["best"]["id"], why
    assert a["final"] == b["final"], why  # the held-out table, number for number
    assert json.loads((run_dir / "archive.json").read_text()) == json.loads((ref_dir / "archive.json").read_text()), why
    assert (run_dir / "best_recipe.yaml").read_text() == (ref_dir / "best_recipe.yaml").read_text(), why
    print(why)
