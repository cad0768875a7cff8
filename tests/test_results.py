"""Committed numbers and the environment they were made in (evomerge.results, evomerge.environment)."""

from __future__ import annotations

import json

import pytest
import torch

from evomerge.environment import describe, differences, fingerprint
from evomerge.results import Number, compare, format_verdicts, load, save


def test_verdicts_follow_the_committed_interval():
    committed = {"det": Number(0.25), "evo": Number(0.40, 0.30, 0.50), "gone": Number(0.1)}
    regenerated = {"det": Number(0.25000001), "evo": Number(0.45), "gone": Number(float("nan"))}
    assert [v.status for v in compare(committed, regenerated)] == ["same", "inside", "missing"]
    moved = compare(committed, {"det": Number(0.26), "evo": Number(0.51)})
    assert [v.status for v in moved] == ["OUTSIDE", "OUTSIDE", "missing"]
    assert not any(v.ok for v in moved)
    # slack widens the interval (and a deterministic value's point) by exactly that much
    assert [v.status for v in compare(committed, {"det": Number(0.26), "evo": Number(0.51)}, slack=0.011)][:2] == \
        ["inside", "inside"]
    text = format_verdicts(moved)
    assert "| evo | 0.4 | [0.3, 0.5] | 0.51 | OUTSIDE |" in text and "| gone | 0.1 | exact | - | missing |" in text


def test_saved_numbers_load_back_with_their_intervals(tmp_path):
    save(tmp_path / "t.md", "# a table", {"a": 0.5, "b": (0.4, 0.3, 0.5), "c": Number(1.0)}, {"command": "x"})
    assert (tmp_path / "t.md").read_text() == "# a table\n"
    data = load(tmp_path / "t.json")
    assert data["command"] == "x"
    assert data["numbers"] == {"a": Number(0.5), "b": Number(0.4, 0.3, 0.5), "c": Number(1.0)}


def test_a_file_without_numbers_is_named(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"command": "x"}))
    with pytest.raises(ValueError, match="t.json: not a committed-numbers file"):
        load(tmp_path / "t.json")


def test_fingerprint_reads_this_stack():
    env = fingerprint()
    assert env["packages"]["torch"] == torch.__version__
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["python"].count(".") == 2 and env["device"] == "cpu"
    assert torch.__version__ in describe(env)


def test_differences_name_what_moved():
    made = {"packages": {"torch": "2.13.0", "numpy": "2.4.6", "evomerge": "0.1.0"}, "cpu_capability": "AVX512",
            "python": "3.11.7"}
    here = {"packages": {"torch": "2.13.0", "numpy": "2.5.0", "evomerge": "0.2.0", "optuna": "4.0"},
            "cpu_capability": "AVX2", "python": "3.11.7"}
    assert differences(made, here) == ["numpy 2.4.6 -> 2.5.0", "optuna absent -> 4.0", "cpu_capability AVX512 -> AVX2"]
    assert differences(made, made) == []


def test_only_what_moves_numbers_counts_for_numerics():
    from evomerge.environment import NUMERICS

    made = {"packages": {"torch": "2.13.0"}, "cpu_capability": "AVX2", "cpu": "AMD EPYC", "cpu_flags": ["avx512f"]}
    here = {"packages": {"torch": "2.13.0"}, "cpu_capability": "AVX2", "cpu": "Intel Xeon", "cpu_flags": ["avx2"]}
    assert differences(made, here) == ["cpu AMD EPYC -> Intel Xeon", "cpu_flags ['avx512f'] -> ['avx2']"]
    assert differences(made, here, keys=NUMERICS) == []


def test_mcnemar_exact_known_answer():
    """1 vs 9 discordant items: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024; concordant items do not count."""
    from evomerge.results import mcnemar

    a = [1] * 1 + [0] * 9 + [1] * 30 + [0] * 10
    b = [0] * 1 + [1] * 9 + [1] * 30 + [0] * 10
    only_a, only_b, p = mcnemar(a, b)
    assert (only_a, only_b) == (1, 9) and p == pytest.approx(22 / 1024)
    assert mcnemar([1, 0], [1, 0])[2] == 1.0
    with pytest.raises(ValueError, match="paired"):
        mcnemar([1, 0], [1])
