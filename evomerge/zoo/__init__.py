"""Locally built model zoos. `ensure(name, root)` builds a zoo once (deterministically) and returns its folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# name -> module with `build(root, seed=..., **options)`; each zoo lives in `<paths.zoo>/<name>`
ZOOS = {"digits": "evomerge.zoo.digits", "jp_mini": "evomerge.zoo.jp_mini", "smollm2": "evomerge.zoo.smollm2",
        "smol_jp": "evomerge.zoo.smol_jp"}


def ensure(name: str, root: str | Path, seed: int = 0, **options) -> Path:
    """`options` are the zoo's build settings (`models.zoo_options`); a different setting rebuilds the zoo."""
    import importlib

    if name not in ZOOS:
        raise ValueError(f"models.zoo: unknown zoo {name!r}; expected one of {list(ZOOS)} or null for your own models")
    return importlib.import_module(ZOOS[name]).build(Path(root).expanduser() / name, seed=seed, **options)


def planned_layers(name: str, **options) -> int | None:
    """Depth of a zoo's models before it is built (for `dry_run`)."""
    if name == "jp_mini":
        from evomerge.zoo import jp_mini

        return int((jp_mini.DEFAULTS | options)["layers"])
    return {"digits": 4, "smollm2": 30, "smol_jp": 30}.get(name)


def is_built(root: Path, name: str, spec: dict, version: int) -> bool:
    """True when `root/zoo.json` records this spec and version. The marker is written last, so its presence means a
    complete zoo; a stale or unreadable one is removed, and the folder is made ready for a (re)build."""
    marker = root / "zoo.json"
    if marker.exists():
        try:
            built = json.loads(marker.read_text())
            if built.get("spec") == spec and built.get("version") == version:
                return True
        except (json.JSONDecodeError, AttributeError):
            pass
        log.warning("%s zoo at %s was built with different settings; rebuilding", name, root)
        marker.unlink()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the {name} zoo folder {root} ({e}); set paths.zoo to a writable folder") from e
    return False


def mark_built(root: Path, spec: dict, version: int, **extra) -> None:
    """Write `root/zoo.json`, last: from now on `is_built` reuses the zoo. It records the environment the zoo was
    trained in, since the same seed gives different weights on another stack."""
    from evomerge.environment import fingerprint
    from evomerge.store import atomic_write_json

    atomic_write_json(root / "zoo.json", {"version": version, "spec": spec, "environment": fingerprint(), **extra})


def save_model_atomically(model, tokenizer, out: Path) -> Path:
    """`save_pretrained` into a temporary sibling folder, then rename: an interrupted build leaves no half model."""
    import shutil

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
