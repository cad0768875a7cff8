"""`evomerge-eval MODEL_DIR [experiment=NAME] [evaluator=NAME] [key=value ...] [split=test] [--out FILE]`: score a
saved model (a search's best_model/, an evomerge-merge export, a source model) with the same evaluators a search
uses, composed from the same configs, and write the scores.

The model is loaded with `evomerge.load_merged` (data-flow hop scales included), in eval mode, and every configured
evaluator scores it on `split` (default test). Output: a JSON file (default MODEL_DIR/evomerge_eval_<split>.json)
with the metrics, the split, the overrides and the environment, and one line per metric on stdout.
"""

from __future__ import annotations

from evomerge.offline import set_offline_env

set_offline_env()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


def lm_eval_results(evaluator, metrics: dict, model_dir: Path, split: str) -> dict:
    """An lm_eval evaluator's metrics in lm-eval's own results layout ({"results": {task: {"metric,filter": v}}}),
    so tools that read lm-eval output files read these too."""
    results: dict[str, dict] = {}
    for name in evaluator.metric_names():
        if name in metrics:
            task, _, key = name.partition("/")
            results.setdefault(task, {"alias": task})[key] = metrics[name]
    return {"results": results, "config": {"model": "evomerge-eval", "model_args": f"pretrained={model_dir}",
                                           "split": split}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="evomerge-eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="a model folder (config.json + weights)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (experiment=..., evaluator=..., ...) and split=...")
    ap.add_argument("--out", help="where the scores go (default MODEL_DIR/evomerge_eval_<split>.json)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    split = "test"
    overrides = []
    for o in args.overrides:
        if o.startswith("split="):
            split = o.split("=", 1)[1]
        else:
            overrides.append(o)
    if split not in ("fitness", "validation", "test"):
        print(f"error: split={split}: expected fitness, validation or test", file=sys.stderr)
        return 2
    model_dir = Path(args.model_dir).expanduser()
    if not (model_dir / "config.json").is_file():
        print(f"error: {model_dir}: not a model folder (no config.json)", file=sys.stderr)
        return 2
    try:
        cfg = compose(overrides)
        from evomerge import evaluator as evaluators_pkg
        from evomerge.evaluator.lm_eval import (
            LMEvalEvaluator,  # lm_eval itself is imported only when one is built
        )
        from evomerge.load import load_merged
        from evomerge.models.pool import load_tokenizer

        trust = bool((cfg.get("models") or {}).get("trust_remote_code", False))
        tokenizer = load_tokenizer(str(model_dir), trust)
        evaluators = evaluators_pkg.build(cfg["evaluator"], tokenizer,
                                          seed=int(cfg.get("seed", 0)), device=args.device)
        model = load_merged(model_dir, trust_remote_code=trust).to(args.device)
        metrics, n, lm_files = {}, 0, {}
        for ev in evaluators:
            res = ev.evaluate(model, split, None)
            metrics.update(res.metrics)
            n += res.n_samples
            if isinstance(ev, LMEvalEvaluator):
                lm_files[ev.name] = lm_eval_results(ev, res.metrics, model_dir, split)
    except Exception as e:  # noqa: BLE001 - one clear line for a bad override, model or dataset
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    from evomerge.environment import fingerprint

    out = Path(args.out) if args.out else model_dir / f"evomerge_eval_{split}.json"
    record = {"model": str(model_dir), "split": split, "overrides": overrides, "n_samples": n, "metrics": metrics,
              "environment": fingerprint()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    for name, results in lm_files.items():  # lm-eval's results format beside it, one file per lm_eval evaluator
        (out.parent / f"{out.stem}.{name}.lm_eval.json").write_text(json.dumps(results, indent=2))
    for k, v in metrics.items():
        print(f"{k}\t{v:.6g}")
    print(f"scores written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
