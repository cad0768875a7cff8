"""mergekit's `chat_template:` key: a named template, a literal Jinja template, or `auto` (the template most of
the input models' tokenizers carry), written into the merged model's tokenizer files.

The named templates are written here from the formats' public descriptions (ChatML, Llama 3, Alpaca, Mistral
[INST]); mergekit also ships `exaone`, which evomerge does not (pass its Jinja text instead).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

NAMED = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "alpaca": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
        "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
        "{% else %}### Response:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}### Response:\n{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
        "{% else %}[INST] {{ m['content'] }} [/INST]{% endif %}{% endfor %}"
    ),
}


def check(value, where: str) -> str:
    """The key's value, checked before any work: `auto`, a name in NAMED, or Jinja text."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected a template name ({', '.join(NAMED)}), 'auto' or Jinja text, "
                         f"found {value!r}")
    if value == "auto" or value in NAMED or "{" in value:
        return value
    raise ValueError(f"{where}: {value!r} is neither a known template name ({', '.join(NAMED)}), 'auto', nor Jinja "
                     "text (a template contains '{{' or '{%')")


def model_template(folder: Path) -> str | None:
    """The chat template a model folder's tokenizer carries (chat_template.jinja wins, as in transformers)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        t = json.loads(cfg.read_text()).get("chat_template")
        if isinstance(t, list):  # named templates: [{name, template}]
            t = next((d.get("template") for d in t if d.get("name") == "default"), None)
        return t if isinstance(t, str) else None
    return None


def resolve(value: str, inputs: list[Path]) -> str | None:
    """The template text for `value`; `auto` picks the most common among the inputs (None when none has one)."""
    if value == "auto":
        found = [t.strip() for t in (model_template(p) for p in inputs) if t]
        return Counter(found).most_common(1)[0][0] if found else None
    return NAMED.get(value, value)


def write(out_dir: Path, template: str) -> None:
    """Set the template in the output's tokenizer: chat_template.jinja and tokenizer_config.json agree."""
    (out_dir / "chat_template.jinja").write_text(template)
    cfg_file = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    cfg["chat_template"] = template
    cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
