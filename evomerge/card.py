"""Model cards for merged checkpoints (a search's `best_model/`, `evomerge-merge` output), Hub-ready.

Built with huggingface_hub's `ModelCard`/`ModelCardData`, so the metadata is what the Hub reads: `base_model` lists
the source models that are hub ids (local folders are named in the text only), `base_model_relation: merge`,
`library_name: transformers`, and the recipe itself in the body.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from evomerge.recipe import Recipe


def model_card(recipe: Recipe, paths: dict[str, str], made_with: str, sections: dict[str, str] | None = None) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    from evomerge.models.pool import is_hub_id

    names = list(dict.fromkeys(([recipe.base] if recipe.base else []) + recipe.models))
    refs = [str(paths.get(m, m)) for m in names]
    hub = [r.split("@", 1)[0] for r in refs if is_hub_id(r)]  # the metadata names repos, not revisions
    data = ModelCardData(library_name="transformers", tags=["merge", "evomerge"],
                         base_model=hub or None, base_model_relation="merge" if hub else None)
    models = "\n".join(f"- `{m}`: {r}" + (" (base)" if m == recipe.base else "") for m, r in zip(names, refs,
                                                                                                  strict=True))
    recipe_yaml = yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True)
    body = [f"# Merged model\n\nMade with {made_with} ({recipe.summary()}).", f"## Models\n\n{models}",
            f"## Recipe\n\n```yaml\n{recipe_yaml}```"]
    body += [f"## {title}\n\n{text.strip()}" for title, text in (sections or {}).items()]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(body) + "\n"))


def write(out_dir: str | Path, *args, **kwargs) -> Path:
    from evomerge.store import atomic_write_text

    path = Path(out_dir) / "README.md"
    atomic_write_text(path, model_card(*args, **kwargs))
    return path
