"""Resuming a run directory from anyone runs no code from it, and a refused run leaves that run's record alone.

The checkpoint is JSON (evomerge/search/checkpoint.py): the optimiser is rebuilt from the config and replays the
recorded calls. A pickle (the old checkpoint.pkl) is never unpickled, whatever else the directory holds.
"""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import yaml

from evomerge import optimizer as optimizer_pkg
from evomerge.search import checkpoint
from evomerge.search.loop import SearchSettings, run_search
from evomerge.search.objectives import Objective
from evomerge.store import RunDirError

pytestmark = pytest.mark.faults

from test_cli import run_cli  # noqa: E402
from test_search import N_FIT, FakeExecutor, FakeSpace  # noqa: E402

from faults.test_lock import _holder  # noqa: E402

ARGS = ["experiment=digits", "search.budget=6", "optimizer.popsize=6", "threads=1"]


class CodeInPickle:
    """Unpickling this writes `marker`: the stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the pickle ran')",)


@pytest.mark.slow
def test_resume_never_unpickles_a_checkpoint(tmp_path, zoo_root, digits_zoo):
    run = tmp_path / "run"
    assert run_cli([*ARGS, f"hydra.run.dir={run}"], zoo_root, tmp_path).returncode == 0
    marker = tmp_path / "pickle_ran"
    evil = pickle.dumps(CodeInPickle(marker))
    other = tmp_path / "someone_elses_run"  # a run directory with an old-format (or planted) pickle checkpoint
    other.mkdir()
    shutil.copy(run / "evaluations.jsonl", other)
    (other / "checkpoint.pkl").write_bytes(evil)
    for extra in ([], ["seed=5"]):  # a resume that matches the config, and one that is refused for its config
        proc = run_cli([*ARGS, f"resume={other}", *extra, f"hydra.run.dir={tmp_path / 'new'}"], zoo_root, tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "old pickle format, which evomerge no longer reads" in proc.stderr
        assert not marker.exists()
    # planted next to a run's own JSON checkpoint: ignored, the run continues from its JSON checkpoint
    (run / "checkpoint.pkl").write_bytes(evil)
    proc = run_cli([*ARGS, "search.budget=12", "resume=true", f"hydra.run.dir={run}"], zoo_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not marker.exists()
    assert len((run / "evaluations.jsonl").read_text().splitlines()) == 12


@pytest.mark.slow
def test_a_refused_run_leaves_the_run_record_alone(tmp_path, zoo_root, digits_zoo):
    run = tmp_path / "run"
    assert run_cli([*ARGS, f"hydra.run.dir={run}"], zoo_root, tmp_path).returncode == 0
    record = {f: (run / ".hydra" / f).read_text() for f in ("config.yaml", "overrides.yaml")}
    assert yaml.safe_load(record["config.yaml"])["seed"] == 0

    proc = run_cli([*ARGS, "seed=5", "resume=true", f"hydra.run.dir={run}"], zoo_root, tmp_path)
    assert proc.returncode == 2 and "the config differs" in proc.stderr and "['seed']" in proc.stderr
    holder = _holder(run)  # a second process locked out of a running run
    try:
        proc = run_cli([*ARGS, "search.budget=12", "resume=true", f"hydra.run.dir={run}"], zoo_root, tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2 and "in use by another evomerge process" in proc.stderr
    assert {f: (run / ".hydra" / f).read_text() for f in record} == record

    # an accepted resume does write the record: it now describes the continued run
    proc = run_cli([*ARGS, "search.budget=12", "resume=true", f"hydra.run.dir={run}"], zoo_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "search.budget=12" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["search"]["budget"] == 12


# ---- the JSON checkpoint from someone else: data only, and checked ----------------------------------------------
OBJ = [Objective("acc/a", "max")]


def _search(run_dir, budget, kind="cmaes", resume=False):
    space = FakeSpace()
    opt = optimizer_pkg.build({"kind": kind, "popsize": 6}, space.xl, space.xu, 1, 0,
                              np.array(list(space.seeds().values())))
    return run_search(space, opt, FakeExecutor(), OBJ, SearchSettings(budget=budget), run_dir, n_fitness=N_FIT,
                      resume=resume, config={"kind": kind})


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_checkpoint_is_plain_json_without_code(tmp_path):
    _search(tmp_path, 12)
    data = json.loads((tmp_path / "checkpoint.json").read_text())
    assert data["format"] == "evomerge-checkpoint" and data["state"]["gen"] == 2 and data["state"]["evals"] == 12
    calls = data["optimizer"]["calls"]
    assert [c["call"] for c in calls] == ["ask", "tell", "ask", "tell"]
    assert all(len(c["F"]) == 6 and len(c["F"][0]) == 1 for c in calls if c["call"] == "tell")
    assert not (tmp_path / "checkpoint.pkl").exists()


def test_replay_reaches_the_state_of_an_uninterrupted_optimiser(tmp_path):
    """The definition of resume: the next proposals equal those of an optimiser that was never checkpointed."""
    for kind in ("cmaes", "nsga2", "de"):
        space = FakeSpace()
        straight = optimizer_pkg.build({"kind": kind, "popsize": 6}, space.xl, space.xu, 1, 0)
        told = np.random.default_rng(0).random((3, 6, 1))
        recorded = checkpoint.Replayable(optimizer_pkg.build({"kind": kind, "popsize": 6}, space.xl, space.xu, 1, 0))
        state = np.random.get_state()
        for opt in (recorded, straight):
            np.random.set_state(state)
            for F in told:
                np.random.random(5)  # something else draws from numpy's global generator between the calls
                opt.tell(opt.ask(), F)
        fresh = checkpoint.Replayable(optimizer_pkg.build({"kind": kind, "popsize": 6}, space.xl, space.xu, 1, 0))
        fresh.replay(json.loads(json.dumps(recorded.calls)), tmp_path / "checkpoint.json")
        after = np.random.get_state()  # cma draws from numpy's global generator: both ask from the same state
        proposed = fresh.ask()
        np.random.set_state(after)
        np.testing.assert_array_equal(proposed, straight.ask(), err_msg=kind)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["optimizer"]["calls"][0].update(x="0" * 64), "proposed other candidates than the original run"),
    (lambda d: d["optimizer"]["calls"].insert(0, {"call": "tell", "F": [[0.0]]}), "malformed checkpoint"),
    (lambda d: d["optimizer"]["calls"][1].update(F="abc"), "malformed checkpoint"),
    (lambda d: d.update(format="pickle"), "not an evomerge checkpoint"),
    (lambda d: d.update(state={"gen": 1, "nope": 2}), "malformed checkpoint, state"),
    (lambda d: d.pop("rng"), r"malformed checkpoint, missing or wrong type: \['rng'\]"),
])
def test_a_tampered_checkpoint_is_refused_naming_the_file(tmp_path, change, message):
    _search(tmp_path, 12)
    ckpt = tmp_path / "checkpoint.json"
    _edit(ckpt, change)
    with pytest.raises(RunDirError, match=message) as e:
        _search(tmp_path, 18, resume=True)
    assert str(ckpt) in str(e.value)
