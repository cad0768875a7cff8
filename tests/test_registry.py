"""The one lazy registry (evomerge/registry.py): unknown names fail with the choices, nothing is imported before it
is asked for, and the core modules do not import the demo zoos."""

from __future__ import annotations

import subprocess
import sys

import pytest

from evomerge.registry import EVALUATORS, OPTIMIZERS, ZOOS, Registry


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ValueError, match=r"optimizer.kind: unknown optimiser 'cmaez'; expected one of \['cmaes', "):
        OPTIMIZERS.get("cmaez", "optimizer.kind")
    with pytest.raises(ValueError, match=r"models.zoo: unknown zoo 'nope'; expected one of \[.*'digits'.*\] or null"):
        ZOOS.get("nope", "models.zoo", " or null for your own models")


def test_entries_are_imported_on_first_use_and_plugins_can_register():
    reg = Registry("thing", {"json_dumps": "json:dumps", "nested": "os:path.join"})
    import json
    import os

    assert reg.get("json_dumps", "x") is json.dumps and reg.get("nested", "x") is os.path.join
    reg.register("mine", len)
    assert reg.get("mine", "x") is len and reg.names() == ["json_dumps", "nested", "mine"]
    reg.unregister("mine")
    assert "mine" not in reg
    assert EVALUATORS.get("vision", "evaluator.x.kind").__name__ == "VisionEvaluator"


def test_the_core_does_not_import_the_demo_zoos():
    code = ("import sys; import evomerge.run, evomerge.plan, evomerge.report, evomerge.models, evomerge.evaluator, "
            "evomerge.evaluator.vision, evomerge.space, evomerge.optimizer, evomerge.executor, evomerge.logger; "
            "print(sorted(m for m in sys.modules if m.startswith('evomerge.zoo.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
