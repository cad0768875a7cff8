"""Through the real CLI: settings that cannot work fail before any model is loaded, and Ctrl-C stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.faults, pytest.mark.slow]

from test_cli import run_cli  # noqa: E402

LOADING = "loading source models"


def _refused(proc, message):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert message in proc.stderr
    assert LOADING not in out and "Traceback" not in out


def test_cuda_without_cuda_is_refused_before_loading(tmp_path, zoo_root, digits_zoo, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no CUDA device, on any machine
    proc = run_cli(["experiment=digits", "device=cuda", f"hydra.run.dir={tmp_path / 'run'}"], zoo_root, tmp_path)
    _refused(proc, "device=cuda: CUDA is not available on this machine; use device=cpu")


def test_popsize_one_is_refused_before_loading(tmp_path, zoo_root, digits_zoo):
    proc = run_cli(["experiment=digits", "optimizer.popsize=1", f"hydra.run.dir={tmp_path / 'run'}"], zoo_root,
                   tmp_path)
    _refused(proc, "optimizer.popsize: expected a positive integer, at least 2 for optimizer.kind=cmaes; found 1")


def test_dry_run_with_a_missing_source_fails(tmp_path, zoo_root, digits_zoo):
    missing = tmp_path / "no_such_model"
    proc = run_cli(["experiment=digits", "dry_run=true", "models.zoo=null", f"models.sources.0.path={missing}",
                    f"hydra.run.dir={tmp_path / 'run'}"], zoo_root, tmp_path)
    _refused(proc, f"models.sources[0]: model 'rot90' path {missing} does not exist")
    assert "Plan (dry run" in proc.stdout  # the plan is still shown
    ok = run_cli(["experiment=digits", "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"], zoo_root, tmp_path)
    assert ok.returncode == 0 and "everything the run needs is available" in ok.stdout


def test_ctrl_c_stops_without_a_traceback_and_says_how_to_resume(tmp_path, zoo_root, digits_zoo):
    run = tmp_path / "run"
    # restarts: CMA-ES alone can converge (and the run end) before the signal arrives on a loaded machine
    args = ["experiment=digits", "optimizer.popsize=6", "optimizer.restarts=100000", "optimizer.restart_strategy=bipop",
            "threads=1", f"hydra.run.dir={run}"]
    env = {**os.environ, "EVOMERGE_ZOO": str(zoo_root), "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "evomerge", *args, "search.budget=100000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "evaluations.jsonl"
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 200:  # interrupt mid-search, after the first checkpoint
        if log.exists() and log.read_bytes().count(b"\n") >= 8:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"interrupted (Ctrl-C); the last checkpoint in {run} is intact: continue the run with resume={run}" in err
    done = log.read_bytes().count(b"\n")
    resumed = run_cli([*args, f"search.budget={done + 6}", "resume=true"], zoo_root, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert log.read_bytes().count(b"\n") == done + 6


@pytest.mark.parametrize("args, message", [
    (["space.searched=null"], "space: nothing to search (searched: {}, searched_global: {}"),
    (["space.method=ties", "++space.searched.density=[0.2,1.7]"],
     "space.searched.density: [0.2, 1.7] leaves the parameter's domain [0, 1] (a fraction of the weights kept)"),
    (["report_metrics=[acc/nope]"], "report_metrics: ['acc/nope'] produced by no evaluator"),
    (["final_split=tset"], "final_split: expected fitness, validation or test"),
])
def test_settings_that_would_fail_after_the_search_are_refused_first(tmp_path, zoo_root, digits_zoo, args, message):
    proc = run_cli(["experiment=digits", *args, f"hydra.run.dir={tmp_path / 'run'}"], zoo_root, tmp_path)
    _refused(proc, message)


def test_an_unresolvable_ray_address_fails_in_seconds(tmp_path, zoo_root, digits_zoo):
    t0 = time.monotonic()
    proc = run_cli(["experiment=digits", "executor=ray", "executor.address=nohost.invalid:6379",
                    f"hydra.run.dir={tmp_path / 'run'}"], zoo_root, tmp_path, timeout=120)
    _refused(proc, "executor.address='nohost.invalid:6379': the host 'nohost.invalid' does not resolve")
    assert time.monotonic() - t0 < 60  # Ray alone retried for 826 s


def test_an_unwritable_run_directory_is_one_message(tmp_path, zoo_root, digits_zoo):
    proc = run_cli(["experiment=digits", "hydra.run.dir=/proc/evomerge_cannot_exist/run"], zoo_root, tmp_path)
    _refused(proc, "run directory /proc/evomerge_cannot_exist/run cannot be created or written")
