"""`evomerge-merge CONFIG OUT_DIR` never writes into an input model, and never leaves an old checkpoint's shards
next to the new weights (through the console script's main, and `python -m evomerge.merge.export`)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomerge.merge.export import main

pytestmark = pytest.mark.faults


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def models(tmp_path, tiny_llamas):
    """Private copies of the tiny models (a test that failed must not damage the session's fixtures)."""
    return {k: shutil.copytree(v, tmp_path / k) for k, v in tiny_llamas.items()}


def _linear(tmp_path, m, weight=0.5):
    cfg = {"merge_method": "linear", "models": [{"model": str(m["a"]), "parameters": {"weight": weight}},
                                                {"model": str(m["b"]), "parameters": {"weight": 1 - weight}}]}
    p = tmp_path / f"linear_{weight}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("where", ["the input", "inside the input", "containing the input"])
def test_out_dir_overlapping_an_input_is_refused(tmp_path, models, capsys, where):
    before = {k: _digest(v) for k, v in models.items()}
    out = {"the input": models["a"], "inside the input": models["a"] / "merged", "containing the input": tmp_path}[where]
    for extra in ([], ["--overwrite"]):  # --overwrite never makes an input writable
        assert main([str(_linear(tmp_path, models)), str(out), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        rel = {"the input": "is", "inside the input": "is inside", "containing the input": "contains"}[where]
        assert f"OUT_DIR {out} {rel} the folder of input" in err and "Choose an OUT_DIR outside every input" in err
    assert {k: _digest(v) for k, v in models.items()} == before
    assert not (models["a"] / "merged").exists()


def test_non_empty_out_dir_needs_overwrite_and_then_holds_only_the_new_checkpoint(tmp_path, models, capsys):
    out = tmp_path / "out"
    cfg = _linear(tmp_path, models, 0.5)
    assert main([str(cfg), str(out), "--no-progress", "--shard-size", "20KB"]) == 0  # a sharded export first
    assert (out / "model.safetensors.index.json").exists()
    (out / "notes.txt").write_text("mine")
    before = _digest(out)

    cfg2 = _linear(tmp_path, models, 0.9)
    assert main([str(cfg2), str(out), "--no-progress"]) == 2
    assert "is not empty" in capsys.readouterr().err and _digest(out) == before  # refused: nothing touched

    assert main([str(cfg2), str(out), "--no-progress", "--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith("model-") or n.endswith(".index.json")], names
    assert "model.safetensors" in names and (out / "notes.txt").read_text() == "mine"
    # the weights on disk are 0.9 a + 0.1 b, computed here from the inputs
    a, b = load_file(models["a"] / "model.safetensors"), load_file(models["b"] / "model.safetensors")
    written = load_file(out / "model.safetensors")
    assert set(written) == set(a)
    for k, v in written.items():
        torch.testing.assert_close(v, 0.9 * a[k] + 0.1 * b[k], rtol=1e-6, atol=1e-6)


def test_module_run_refuses_an_input_as_out_dir(tmp_path, models):
    before = _digest(models["b"])
    proc = subprocess.run([sys.executable, "-m", "evomerge.merge.export", str(_linear(tmp_path, models)),
                           str(models["b"]), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "evomerge-merge: error: OUT_DIR" in proc.stderr, proc.stderr[-2000:]
    assert _digest(models["b"]) == before
    assert json.loads((models["b"] / "config.json").read_text())  # still the input's own config


def test_unwritable_out_dir_is_refused_before_any_model_is_read(tmp_path, models, capsys):
    out = "/proc/evomerge_cannot_exist/out"  # no process may create folders in /proc, root included
    assert main([str(_linear(tmp_path, models)), out, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot be created or written" in err and out in err and "check permissions and free disk space" in err


@pytest.mark.parametrize("size", ["0", "-5MB"])
def test_shard_size_must_be_positive(tmp_path, models, capsys, size):
    assert main([str(_linear(tmp_path, models)), str(tmp_path / "out"), "--no-progress", f"--shard-size={size}"]) == 2
    assert "--shard-size: expected a positive size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_disk_filling_during_the_export_is_one_message(tmp_path, models, capsys, monkeypatch):
    """safetensors reports ENOSPC as a SafetensorError; the user gets the file, the reason and how to go on."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "out"
    assert main([str(_linear(tmp_path, models)), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "inputs are untouched" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))  # no half-written shard is left


@pytest.mark.parametrize("content", ["", "{\"model_type\": \"llama\", ", "[1, 2]"])
def test_a_corrupt_config_json_names_the_file(tmp_path, models, capsys, content):
    (models["b"] / "config.json").write_text(content)
    assert main([str(_linear(tmp_path, models)), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(models["b"] / "config.json") in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _cache_model(cache, repo: str, src, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """Lay out a model as huggingface_hub's cache does: refs/main -> snapshots/<commit>/files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(src, folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    return folder / "snapshots" / commit


def test_hub_ids_resolve_from_the_local_cache_offline_and_a_missing_one_is_named(tmp_path, models, capsys,
                                                                                  monkeypatch):
    cache = tmp_path / "hf_cache"
    _cache_model(cache, "org/model-a", models["a"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cfg = {"merge_method": "linear", "models": [{"model": "org/model-a", "parameters": {"weight": 0.5}},
                                                {"model": str(models["b"]), "parameters": {"weight": 0.5}}]}
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main([str(path), str(out), "--no-progress"]) == 0, capsys.readouterr().err
    a, b = load_file(models["a"] / "model.safetensors"), load_file(models["b"] / "model.safetensors")
    merged = load_file(out / "model.safetensors")
    k = next(iter(a))
    torch.testing.assert_close(merged[k], 0.5 * a[k] + 0.5 * b[k])
    from huggingface_hub import ModelCard  # the card is Hub metadata: the hub source is its base model

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == ["org/model-a"] and card.data.library_name == "transformers"
    assert card.data.to_dict()["base_model_relation"] == "merge" and "## Recipe" in card.text
    cfg["models"][0]["model"] = "org/not-cached@v2"
    path.write_text(yaml.safe_dump(cfg))
    assert main([str(path), str(tmp_path / "out2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'org/not-cached@v2' is not in the local Hugging Face cache and the hub is offline" in err
