"""`python -m evomerge experiment=NAME [overrides]`: run one experiment through Hydra."""

from __future__ import annotations

from evomerge.offline import set_offline_env

set_offline_env()

import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

log = logging.getLogger("evomerge")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from evomerge.run import run

    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # interpolation errors: name the key
        raise SystemExit(f"error: cannot resolve the config: {e}") from None
    from safetensors import SafetensorError

    try:
        run(plain, run_dir, record=lambda d: write_record(d, cfg, hydra_cfg))
    except (ValueError, FileNotFoundError, OSError, RuntimeError, SafetensorError) as e:
        hint = ""
        if isinstance(e, (OSError, SafetensorError)) and not isinstance(e, FileNotFoundError):
            d = Path(plain["resume"]).expanduser() if isinstance(plain.get("resume"), str) else Path(run_dir)
            hint = (f"\nwriting failed (a full disk?); the search's last checkpoint in {d} is intact: free space, then "
                    f"continue with resume={d} (only the unfinished steps and the final table are redone)")
        log.error("%s%s", e, hint)
        print(f"\nerror: {e}{hint}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        d = Path(plain["resume"]).expanduser() if isinstance(plain.get("resume"), str) else Path(run_dir)
        _interrupted(f"; the last checkpoint in {d} is intact: continue the run with resume={d} (or resume=true "
                     f"with hydra.run.dir={d})")


def write_record(run_dir, cfg: DictConfig, hydra_cfg) -> None:
    """The run's record, as Hydra writes it (config.yaml, hydra.yaml, overrides.yaml in .hydra/), but only once the
    run is accepted (lock held, directory checked): a refused run must not rewrite another run's record."""
    from evomerge.store import atomic_write_text

    d = Path(run_dir) / ".hydra"
    atomic_write_text(d / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(Path(run_dir) / "config.resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(d / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    atomic_write_text(d / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task))))


def _interrupted(hint: str = "") -> None:
    """Ctrl-C: one line and exit status 130 (like SIGTERM, no traceback), saying how to continue."""
    print(f"\ninterrupted (Ctrl-C){hint}", file=sys.stderr)
    raise SystemExit(130) from None


def _check_output_folder(argv: list[str]) -> None:
    """Hydra creates the run directory before evomerge runs, and reports a failure there with a traceback: check the
    folder it will create first (the `hydra.run.dir` override, else the outputs folder), creating nothing."""
    import os

    from evomerge.store import RunDirError, check_creatable

    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith(key)]
    folder = given[-1].split("${")[0] if given else os.environ.get("EVOMERGE_OUTPUTS") or (
        "multirun" if multirun else "outputs")
    try:
        check_creatable(folder or ".", "run directory")
    except RunDirError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def replay_overrides(argv: list[str]) -> list[str]:
    """`resume=PATH`: the overrides the run was started with (PATH/.hydra/overrides.yaml) go first, so a user need
    not retype them; overrides given now come after them and win. `resume=true` runs in their own folder as given."""
    given = [a for a in argv if a.startswith("resume=")]
    if not given:
        return argv
    value = given[-1].split("=", 1)[1]
    if value.lower() in ("true", "false", "null", ""):
        return argv
    saved = Path(value).expanduser() / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        return argv  # run.py says what is wrong with PATH
    import yaml

    old = [str(o) for o in (yaml.safe_load(saved.read_text()) or [])
           if not str(o).startswith(("resume=", "hydra.run.dir=", "hydra.sweep.dir="))]
    keys = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
    old = [o for o in old if o.split("=", 1)[0].lstrip("+~") not in keys]
    if old:
        print(f"resume: replaying the run's overrides from {saved}: {' '.join(old)}", file=sys.stderr)
    return old + argv


GROUPS = {"experiment": "experiments (experiment=NAME)", "models": "model pools (models=NAME)",
          "merge": "merge methods (merge=NAME)", "space": "search spaces (space=NAME)",
          "optimizer": "optimisers (optimizer=NAME)", "evaluator": "fitness evaluators (evaluator=NAME)",
          "executor": "executors (executor=NAME)", "logger": "loggers (logger=NAME)"}


def describe_configs() -> str:
    """Every config group's options with the first line of each file's header comment."""
    from importlib import resources

    out = ["usage: python -m evomerge [experiment=NAME] [group=OPTION ...] [key=value ...]",
           "       (Hydra's own help: python -m evomerge --hydra-help; the composed config: --cfg job)", ""]
    conf = resources.files("evomerge.conf")
    for group, title in GROUPS.items():
        out.append(f"{title}:")
        for f in sorted(conf.joinpath(group).iterdir(), key=lambda f: f.name):
            if not f.name.endswith(".yaml"):
                continue
            lines = [ln[1:].strip() for ln in f.read_text().splitlines() if ln.startswith("#")
                     and not ln.startswith("# @package")]
            first = lines[0] if lines else ""
            out.append(f"  {f.name[:-5]:<22} {first[:110]}")
        out.append("")
    out.append("Other tools: evomerge-merge CONFIG OUT_DIR (export a merge), evomerge-eval MODEL_DIR (score a saved "
               "model), evomerge-report RUN_DIR (tables and plots of runs).")
    return "\n".join(out)


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(describe_configs())
        return
    sys.argv[1:] = replay_overrides(sys.argv[1:])
    try:
        if not any(a in ("-h", "--help", "--cfg", "-c", "--info") for a in sys.argv[1:]):
            _check_output_folder(sys.argv[1:])
        _app()
    except KeyboardInterrupt:  # before the run started (imports, Hydra's config composition)
        _interrupted()


if __name__ == "__main__":
    main()
