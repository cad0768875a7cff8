"""Disk full or an unwritable run directory: a clear error, and the last good checkpoint left intact."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from evomerge import optimizer as optimizer_pkg
from evomerge import store
from evomerge.search import checkpoint as checkpoint_mod
from evomerge.search import loop as loop_mod
from evomerge.search.loop import SearchSettings, run_search
from evomerge.search.objectives import Objective
from evomerge.store import RunDirError, check_writable, read_jsonl

pytestmark = pytest.mark.faults

from test_search import N_FIT, FakeExecutor, FakeSpace, Killed  # noqa: E402

OBJ = [Objective("acc/a", "max")]


def _search(run_dir, budget, resume=False, executor=None):
    space = FakeSpace()
    opt = optimizer_pkg.build({"kind": "cmaes", "popsize": 6}, space.xl, space.xu, 1, 0)
    return run_search(space, opt, executor or FakeExecutor(), OBJ, SearchSettings(budget=budget), run_dir,
                      n_fitness=N_FIT, resume=resume, config={"k": 1})


def _enospc_after(monkeypatch, module, target, n_ok):
    """Let `n_ok` calls of module.<target> through, then fail like a full disk."""
    real = getattr(module, target)
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(module, target, flaky)


@pytest.mark.parametrize("module,target,n_ok", [(checkpoint_mod, "atomic_write_text", 2),
                                                (loop_mod, "append_jsonl", 14)])
def test_disk_full_gives_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, module, target, n_ok):
    ref = _search(tmp_path / "ref", 30)
    run_dir = tmp_path / "run"
    _enospc_after(monkeypatch, module, target, n_ok)
    with pytest.raises(RunDirError) as e:
        _search(run_dir, 30)
    msg = str(e.value)
    assert f"in {run_dir}: No space left on device" in msg and "resume=true" in msg
    assert "last good checkpoint" in msg and "is intact" in msg
    ckpt = json.loads((run_dir / "checkpoint.json").read_text())
    assert ckpt["state"]["gen"] == 2 and ckpt["state"]["evals"] == 12
    assert not list(run_dir.glob(".checkpoint.json.*.tmp"))  # the temporary file was cleaned up
    monkeypatch.undo()
    res = _search(run_dir, 30, resume=True)  # space freed: resume ends exactly like the uninterrupted run
    assert [r["metrics"] for r in res.records] == [r["metrics"] for r in ref.records]
    assert res.best["id"] == ref.best["id"]


def test_unwritable_run_dir_fails_before_compute(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(store.tempfile, "mkstemp", denied)  # root ignores chmod, so simulate the denial
    with pytest.raises(RunDirError, match=r"run directory .* is not writable: Permission denied; expected a "
                                          r"directory this process can create files in"):
        check_writable(tmp_path / "out")
    # a path under a regular file cannot be created at all
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is not writable"):
        check_writable(tmp_path / "file" / "run")


def test_torn_last_line_is_dropped_and_resume_rewrites_the_log(tmp_path):
    ex = FakeExecutor(crash_after=9)
    with pytest.raises(Killed):  # dies inside generation 1 (6 records of generation 0 are on disk)
        _search(tmp_path, 18, executor=ex)
    with open(tmp_path / "evaluations.jsonl", "a") as f:
        f.write('{"id": 6, "generation": 1, "gen')  # a line cut by SIGKILL mid-write
    assert len(read_jsonl(tmp_path / "evaluations.jsonl")) == 6
    res = _search(tmp_path, 18, resume=True)
    assert len(res.records) == 18 and len(read_jsonl(tmp_path / "evaluations.jsonl")) == 18
    assert np.all([r["id"] for r in res.records] == np.arange(18))


@pytest.mark.parametrize("log", ["evaluations.jsonl", "cache.jsonl"])
def test_every_append_only_log_survives_a_torn_last_line(tmp_path, log):
    """Resume after a torn line, then read the log again: new records must not have been glued onto the fragment."""
    with pytest.raises(Killed):
        _search(tmp_path, 18, executor=FakeExecutor(crash_after=9))
    n_before = len(read_jsonl(tmp_path / log))
    with open(tmp_path / log, "a") as f:
        f.write('{"key": "abc", "metr')  # a line cut by SIGKILL mid-write
    res = _search(tmp_path, 24, resume=True)
    assert len(res.records) == 24
    records = read_jsonl(tmp_path / log)  # a fragment mid-file would raise "corrupt record in the middle"
    assert len(records) > n_before and all("abc" != r.get("key") for r in records)
    assert (tmp_path / log).read_bytes().endswith(b"\n")


def test_append_keeps_a_whole_last_record_missing_its_newline(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}')
    store.append_jsonl(p, {"a": 3})
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}, {"a": 3}]
    p.write_text('{"a": 1}\n{"a": 2')
    store.append_jsonl(p, {"a": 3})
    assert read_jsonl(p) == [{"a": 1}, {"a": 3}]
    p.write_text('{"a": ')
    store.append_jsonl(p, {"a": 3})
    assert read_jsonl(p) == [{"a": 3}]


def test_kill_between_checkpoint_temp_write_and_rename(tmp_path, monkeypatch):
    """The process dies after the new checkpoint's temporary file is written but before the rename."""
    ref = _search(tmp_path / "ref", 30)
    run_dir = tmp_path / "run"
    real_replace = store.os.replace
    calls = {"n": 0}

    def replace(src, dst):
        if str(dst).endswith("checkpoint.json"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise Killed()
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", replace)
    with pytest.raises(Killed):
        _search(run_dir, 30)
    monkeypatch.undo()
    assert json.loads((run_dir / "checkpoint.json").read_text())["state"]["gen"] == 2  # the old one, whole
    (run_dir / ".checkpoint.json.abc.tmp").write_bytes(b'{"half a')  # as SIGKILL would leave it
    res = _search(run_dir, 30, resume=True)
    assert [r["metrics"] for r in res.records] == [r["metrics"] for r in ref.records]
    assert not list(run_dir.glob(".checkpoint.json.*.tmp"))


def test_kill_between_the_last_checkpoint_and_the_archive_write(tmp_path, monkeypatch):
    """Killed after the final generation's checkpoint but before its archive.json: the resume has no generation
    left to run, and must still leave the archive of the finished search (found by the SIGKILL test)."""
    ref = _search(tmp_path / "ref", 18)
    run_dir = tmp_path / "run"
    real = loop_mod.atomic_write_json
    calls = {"n": 0}

    def write(path, obj):
        calls["n"] += 1
        if calls["n"] == 3:  # the archive of generation 2, the last one (its checkpoint is already on disk)
            raise Killed()
        return real(path, obj)

    monkeypatch.setattr(loop_mod, "atomic_write_json", write)
    with pytest.raises(Killed):
        _search(run_dir, 18)
    monkeypatch.undo()
    assert json.loads((run_dir / "checkpoint.json").read_text())["state"]["gen"] == 3
    res = _search(run_dir, 18, resume=True)
    assert len(res.records) == 18
    assert json.loads((run_dir / "archive.json").read_text()) == json.loads((tmp_path / "ref" / "archive.json")
                                                                              .read_text())
    assert [h["generation"] for h in ref.hypervolume] == [0, 1, 2]
