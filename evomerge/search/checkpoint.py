"""The search checkpoint as plain JSON: nothing in it is code, so resuming a run directory from anyone is safe.

cma's CMAEvolutionStrategy and pymoo's algorithms can only be serialised by pickling them (pymoo's operators even
need cloudpickle), and unpickling runs whatever code the file names. So the checkpoint stores no optimiser object:
it stores what the optimiser was *told*. `Replayable` wraps the optimiser and records each call as data: for
`ask`, a digest of the proposed X; for `tell`, the F and G it was given; for both, the global numpy/python RNG
states when something outside the optimiser moved them since its last call (cma draws from numpy's global
generator). Resuming rebuilds the optimiser from the config and seed, exactly as the original run did, and replays
the calls: ask and tell are deterministic, so it reaches the same state. Each replayed ask must propose the
recorded X (the digest), otherwise (a different cma/pymoo version, a changed space) the resume is refused.

File: `checkpoint.json` = {format, version, config, state (loop counters, hypervolume history), rng (global
numpy/python/torch states when the checkpoint was written), optimizer: {calls: [...]}}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path

import numpy as np

from evomerge.search.settings import RESUME_FREE
from evomerge.store import RunDirError, _json_default, atomic_write_text, read_jsonl

FORMAT = "evomerge-checkpoint"
VERSION = 2  # 1 was a pickle (checkpoint.pkl), never read since it could run code
NAME = "checkpoint.json"
OLD_NAME = "checkpoint.pkl"


# ---- RNG states as plain data ---------------------------------------------------------------------------------
def global_rng() -> dict:
    """numpy's and python's global generator states (what cma and other libraries draw from), as JSON data."""
    s = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {"numpy": {"key": s["state"]["key"].tolist(), "pos": int(s["state"]["pos"]),
                      "has_gauss": int(s["has_gauss"]), "gauss": float(s["gauss"])},
            "python": [version, list(internal), gauss]}


def set_global_rng(state: dict) -> None:
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": np.asarray(n["key"], dtype=np.uint32),
                                                               "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))


def torch_rng() -> str:
    import torch

    return base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")


def set_torch_rng(text: str) -> None:
    import torch

    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8))


def digest(X) -> str:
    """Fingerprint of a proposed population (float64 bytes and shape), to check that a replay proposes the same."""
    X = np.ascontiguousarray(np.atleast_2d(np.asarray(X, dtype=np.float64)))
    return hashlib.sha256(repr(X.shape).encode() + X.tobytes()).hexdigest()


# ---- the optimiser, recorded ----------------------------------------------------------------------------------
class Replayable:
    """The optimiser behind the loop's ask/tell, recording every call as plain data (see the module docstring)."""

    def __init__(self, optimizer):
        self.inner = optimizer
        self.calls: list[dict] = []
        self._left: dict | None = None  # the global RNG states the optimiser's last call left behind
        self._asked = None

    def __getattr__(self, name):  # popsize, weights, scalarises, ... of the wrapped optimiser
        return getattr(self.__dict__["inner"], name)

    def _entry(self, call: str) -> dict:
        now = global_rng()
        return {"call": call} if now == self._left else {"call": call, "rng": now}

    def _done(self, entry: dict) -> None:
        self._left = global_rng()
        self.calls.append(entry)

    def ask(self):
        entry = self._entry("ask")
        X = self.inner.ask()
        entry["x"] = digest(X)
        self._asked = X
        self._done(entry)
        return X

    def tell(self, X, F, G=None) -> None:
        entry = self._entry("tell")
        entry["F"] = np.asarray(F, float).tolist()
        entry["G"] = None if G is None else np.asarray(G, float).tolist()
        self.inner.tell(X, F, G)
        self._done(entry)

    def stop(self) -> bool:
        return self.inner.stop()

    def replay(self, calls: list, where: Path) -> None:
        """Bring a freshly built optimiser to the recorded state by repeating its calls with the recorded data."""
        for i, entry in enumerate(calls):
            try:
                if "rng" in entry:
                    set_global_rng(entry["rng"])
                if entry["call"] == "ask":
                    self.ask()
                    if self.calls[-1]["x"] != entry["x"]:
                        raise RunDirError(
                            f"{where}: replaying the optimiser, call {i} (ask) proposed other candidates than the "
                            f"original run; the optimiser library (cma/pymoo) or the search space differs from the "
                            f"one the run started with, so it cannot be continued exactly. Start a new run directory")
                elif entry["call"] == "tell" and self._asked is not None:
                    G = entry.get("G")
                    self.tell(self._asked, np.asarray(entry["F"], float), None if G is None else np.asarray(G, float))
                else:
                    raise ValueError(f"expected 'ask' or 'tell' after an ask, found {entry.get('call')!r}")
            except RunDirError:
                raise
            except Exception as e:
                raise RunDirError(f"{where}: malformed checkpoint, optimizer call {i}: {type(e).__name__}: {e}; it "
                                  f"is written atomically, so it was changed outside evomerge") from None


# ---- the file -------------------------------------------------------------------------------------------------
def write(path: Path, config: dict | None, state: dict, optimizer: Replayable) -> None:
    blob = {"format": FORMAT, "version": VERSION, "config": config, "state": state,
            "rng": {**global_rng(), "torch": torch_rng()}, "optimizer": {"calls": optimizer.calls}}
    atomic_write_text(path, json.dumps(blob, separators=(",", ":"), default=_json_default))


REQUIRED = {"config": (dict, type(None)), "state": dict, "rng": dict, "optimizer": dict}


def read(path: Path) -> dict:
    """Parse and check the checkpoint's structure; any problem is one error naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e}); it is written "
                          f"atomically, so it was changed outside evomerge") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RunDirError(f"{path}: not an evomerge checkpoint (expected a JSON object with format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise RunDirError(f"{path}: checkpoint version {data.get('version')!r}, expected {VERSION}")
    bad = [k for k, t in REQUIRED.items() if not isinstance(data.get(k), t)]
    if bad or not isinstance(data["optimizer"].get("calls"), list):
        raise RunDirError(f"{path}: malformed checkpoint, missing or wrong type: {bad or ['optimizer.calls']}")
    return data


def restore_rng(data: dict, path: Path) -> None:
    """The global RNG states of the moment the checkpoint was written (after the optimiser's replay)."""
    try:
        set_global_rng(data["rng"])
        set_torch_rng(data["rng"]["torch"])
    except Exception as e:
        raise RunDirError(f"{path}: malformed checkpoint, rng: {type(e).__name__}: {e}") from None


def normalised(config: dict | None) -> dict | None:
    """A config as it reads back from JSON (tuples become lists), so saved and current compare equal."""
    return None if config is None else json.loads(json.dumps(config, default=_json_default))


def check_run_dir(run_dir: Path, resume: bool, config: dict | None) -> None:
    """Before any model is loaded: a fresh run refuses a used directory; a resume refuses a changed config."""
    run_dir = Path(run_dir)
    ckpt, log_path = run_dir / NAME, run_dir / "evaluations.jsonl"
    old = run_dir / OLD_NAME
    if not resume:
        if ckpt.exists() or old.exists() or read_jsonl(log_path):
            raise RunDirError(f"run directory {run_dir} already holds a search ({log_path.name}); continue it with "
                              f"resume=true or choose a new directory")
        return
    if old.exists() and not ckpt.exists():  # never unpickled: a pickle can run any code
        raise RunDirError(f"{old}: a checkpoint in the old pickle format, which evomerge no longer reads (unpickling "
                          f"can run code). Start a new run directory, or delete {old.name} to redo this run's search "
                          f"from the start (finished evaluations come back from cache.jsonl at no cost)")
    if ckpt.exists() and config is not None:
        check_config(ckpt, read(ckpt).get("config"), config, run_dir)
    for name in (NAME, "archive.json", "evaluations.jsonl"):  # temporaries of a write cut by a kill
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def check_config(ckpt: Path, saved: dict | None, config: dict | None, run_dir: Path) -> None:
    config = normalised(config)
    if isinstance(saved, dict) and isinstance(saved.get("search"), dict):  # runs saved before these were exempt
        saved = {**saved, "search": {k: v for k, v in saved["search"].items() if k not in RESUME_FREE}}
    if config is None or saved is None or saved == config:
        return
    diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    raise ValueError(f"resume: the config differs from the one {run_dir} was started with, in {diff}; resume "
                     f"with the original settings (only search.budget may change) or start a new run directory")
