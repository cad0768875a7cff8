"""Locally built model zoos. `ensure(name, root)` builds a zoo once (deterministically) and returns its folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from evomerge.registry import ZOOS

log = logging.getLogger(__name__)

HINT = " or null for your own models"


def ensure(name: str, root: str | Path, seed: int = 0, folder: str | None = None, **options) -> Path:
    """Build the zoo registered as `name` (evomerge.registry.ZOOS: a module with `build(root, seed=..., **options)`)
    in `<root>/<folder>` (default `<root>/<name>`), once. `options` are its build settings (`models.zoo_options`);
    a different setting rebuilds the zoo, so a variant gets its own `folder` (`models.zoo_dir`)."""
    return ZOOS.get(name, "models.zoo", HINT).build(Path(root).expanduser() / (folder or name), seed=seed, **options)


def planned_layers(name: str, **options) -> int | None:
    """Depth of a zoo's models before it is built (for `dry_run`): the zoo module's `planned_layers(**options)`."""
    return ZOOS.get(name, "models.zoo", HINT).planned_layers(**options)


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
