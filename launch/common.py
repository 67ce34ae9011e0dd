"""What every recipe's command line shares: arguments, config errors (exit 2 with one message, no
traceback, before anything starts), the run folder, the report. Each recipe script stays a short story on
top of this.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rl.config import ConfigError, describe, load_config, parse_override, read_yaml
from rl.evaluate import trend_line

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "launch/configs/smoke.yaml"


def parse_args(recipe: str, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"launch/{recipe}.py",
        description=f"Windward {recipe} recipe. Settings: a YAML file plus key.path=value overrides.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="configuration keys (key=default [allowed] description):\n" + "\n".join(describe()),
    )
    p.add_argument("--config", help="YAML config file (default: the recipe's own)")
    p.add_argument("--smoke", action="store_true", help=f"a few quick steps ({SMOKE.relative_to(ROOT)} on top)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the per-device memory plan (rl/memory_plan.py) and exit: 0 if it fits, 2 naming the "
                        "key to change if not; model.path and data.path need not be on this machine")
    p.add_argument("--device-gib", type=_gib, default=None,
                   help="--dry-run: memory of one device (default 80 GiB for a GPU run, this host's for a CPU run)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = p.parse_args(argv)
    if args.device_gib is not None and not args.dry_run:
        p.error("--device-gib sizes the device of --dry-run's plan; give --dry-run with it")
    return args


def _gib(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of GiB")
    return value


def merged_overrides(base: Path, extra: Path) -> list[str]:
    """Flatten a YAML overlay into dotted overrides (applied after the base file)."""
    out: list[str] = []

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out.append(f"{prefix}{k}={json.dumps(v)}")

    walk(read_yaml(extra) or {}, "")
    return out


def write_report(run_dir: Path, recipe: str, summary: dict, seconds: float) -> Path:
    hist = summary["history"]
    rewards = [h["reward/mean"] for h in hist]
    k = min(3, len(rewards))
    stages = ("step", "generate", "reward", "logprobs", "update", "sync")
    lines = [
        f"# {recipe} run report", "",
        f"- run folder: `{run_dir}`",
        f"- steps: {len(hist)}; final policy_version: {summary['policy_version']}",
        f"- wall time: {seconds:.1f} s",
        f"- reward mean, first {k} steps: {sum(rewards[:k]) / max(k, 1):.4f}; last {k} steps: "
        f"{sum(rewards[-k:]) / max(k, 1):.4f}", *filter(None, [trend_line(hist)]), "",
        "| step | reward mean | reward std | response length | " + " | ".join(f"{s} s" for s in stages) + " |",
        "|" + "---|" * (4 + len(stages)),
    ]
    for i, h in enumerate(hist, 1):
        lines.append(f"| {i} | {h['reward/mean']:.4f} | {h['reward/std']:.4f} | {h['response_length/mean']:.1f} | "
                     + " | ".join(f"{h.get('time/' + s, 0.0):.2f}" for s in stages) + " |")
    from launch.stages import plots

    plots(run_dir, hist, [])
    lines += ["", "Per-step metrics: `metrics.jsonl` (one JSON object per step); where each step's time goes: "
                  "`plots/step_time.png`."]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def dry_run(cfg, device_gib: float | None) -> int:
    """--dry-run: the memory plan; exit 2 naming the key to change when it does not fit."""
    from rl.memory_plan import format_plan, plan_config

    try:
        plan = plan_config(cfg, device_gib)
    except ValueError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    print(format_plan(plan), flush=True)
    if not plan.fits:
        print(f"configuration error: the memory plan does not fit: {what_to_change(plan)}", file=sys.stderr)
        return 2
    return 0


def what_to_change(plan) -> str:
    """A plan's problems, each with the key to change (--dry-run's error, a run's warning)."""
    return "; ".join(f"{what}: change '{key}'" for what, key in plan.problems)


def memory_warning(cfg, device_gib: float | None = None) -> str | None:
    """A run's memory plan checked before anything starts (the --dry-run plan, rl/memory_plan.py): a warning
    naming the key to change when the worst case (every row at agent.max_context_tokens) does not fit, or
    saying why there is no plan; None when it fits. A warning, not an error: real rows are usually shorter."""
    from rl.memory_plan import plan_config

    try:
        plan = plan_config(cfg, device_gib)
    except (ValueError, OSError) as err:
        return f"no memory plan for this run ({err}); --dry-run says more"
    if plan.fits:
        return None
    return f"the memory plan does not fit in the worst case (--dry-run prints it): {what_to_change(plan)}"


def check_stage_order(stages: list[str], allowed: tuple[str, ...]) -> str | None:
    """The stage-list mistakes every recipe with an expert and SFT refuses: an unknown stage (besides
    eval_<name>), and 'sft' before 'expert' (the SFT data are the expert's trajectories). None if fine."""
    seen = []
    for s in stages:
        if s not in allowed and not (s.startswith("eval_") and len(s) > 5):
            return f"pipeline.stages: unknown stage {s!r}; allowed: {', '.join(allowed)} and eval_<name>"
        if s == "sft" and "expert" not in seen:
            return "pipeline.stages: 'sft' needs 'expert' before it (the SFT data are the expert's trajectories)"
        seen.append(s)
    return None


#: keys only some recipes read (rl/config.py cannot tell recipes apart): set elsewhere they would be ignored
WORLD_EXPERT = ("websailor", "webshaper", "webdancer", "evolvesearch", "memp")  # envs/world/expert.py's users
RECIPE_ONLY = {"data.shaper_layers": ("webshaper",), "data.shaper_expander": ("webshaper",),
               "data.shaper_writer": ("webshaper",), "data.shaper_llm": ("webshaper",),
               "sft.expert_thoughts": WORLD_EXPERT,
               # the split of every recipe with an expert (MaskSearch has none: its RAMP tasks are RL and held out)
               "sft.expert_tasks": WORLD_EXPERT + ("vrag", "webwatcher")}


def recipe_only_keys(cfg, recipe: str, overlay: frozenset[str] = frozenset()) -> str | None:
    """A setting only other recipes read, changed from its default under this one (None if none). `overlay`:
    the keys `--smoke` sizes (set for whatever reads them, never reported as read by nothing)."""
    import msgspec

    from rl.config import Config

    defaults = Config()
    for key, owners in RECIPE_ONLY.items():
        if key in overlay:
            continue
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if recipe not in owners and value != getattr(getattr(defaults, section), name):
            only = " and ".join(f"launch/{o}.py" for o in owners)
            return (f"{key}={msgspec.json.encode(value).decode()}: only {only} read it; "
                    f"launch/{recipe}.py would ignore it")
    return None


def main(recipe: str, default_config: Path, argv: list[str], pipeline=None, check=None, extend=None) -> int:
    """Parse, validate (exit 2 on a mistake), then run: `pipeline(cfg, run_dir) -> results` when the
    config is the recipe's own task, else the plain RL loop (e.g. the spine's target_token task).
    `extend(run_dir, results)`: the recipe's own report sections, after report.md is written."""
    args = parse_args(recipe, argv)
    try:  # --smoke's sizes apply where a stage reads them, so they are an overlay, not settings of their own
        overlay = merged_overrides(default_config, SMOKE) if args.smoke else []
        cfg = load_config(args.config or default_config, args.overrides, overlay=overlay, check_inputs=not args.dry_run)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2

    given = {parse_override(o)[0] for o in args.overrides}
    problem = recipe_only_keys(cfg, recipe, frozenset(parse_override(o)[0] for o in overlay) - given)
    if problem:
        print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    use_pipeline = pipeline is not None and cfg.data.task != "target_token"
    problem = check(cfg) if (use_pipeline and check) else None
    if problem:
        print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(cfg, args.device_gib)
    warning = memory_warning(cfg)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    run_dir = Path(cfg.run.dir) if cfg.run.dir else ROOT / "runs" / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"run folder: {run_dir}", flush=True)
    t0 = time.time()
    if use_pipeline:
        from launch.stages import report

        try:  # what only the run folder or the data can refuse (a changed resume, too few RL questions): no actor is up
            results = pipeline(cfg, run_dir)
        except ConfigError as err:
            print(f"configuration error: {err}", file=sys.stderr)
            return 2
        path = report(run_dir, recipe, cfg, results, time.time() - t0)
        if extend is not None:
            extend(run_dir, results)
    else:
        from rl.controller import train

        summary = train(cfg, run_dir)
        path = write_report(run_dir, recipe, summary, time.time() - t0)
    print(f"report: {path}")
    print(f"run folder: {run_dir}", flush=True)
    return 0
