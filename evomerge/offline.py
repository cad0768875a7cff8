"""Offline defaults for every entry point: set before transformers, datasets or lm_eval are imported.

With these flags a hub lookup fails in seconds instead of retrying for 30-50 s (shared/reference/offline_stack.md).
A user who wants the hub sets EVOMERGE_ONLINE=1.
"""

import os


def set_offline_env() -> None:
    if os.environ.get("EVOMERGE_ONLINE", "0") in ("1", "true", "True"):
        return
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    if "WANDB_MODE" not in os.environ:  # evomerge's default, not the user's: a W&B project still switches online
        os.environ["WANDB_MODE"] = "offline"
        os.environ[WANDB_MODE_IS_DEFAULT] = "offline"


WANDB_MODE_IS_DEFAULT = "EVOMERGE_DEFAULT_WANDB_MODE"  # the WANDB_MODE value set_offline_env set (not the user)


def hub_offline() -> bool:
    """True when hub lookups are switched off (HF_HUB_OFFLINE set, as evomerge's entry points do by default)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
