"""The evaluation harness (SEEDS 14 item 43): any policy on any task file, through the same agent loop, tools,
rewards and actor groups as training (rl/groups.py RLGroups without its trainer; launch/stages.py evaluation()).

    python launch/evaluate.py --policy POLICY --tasks FILE [--format auto|jsonl|webshaper|bcvl|qa] [--k 3]
        [--judge rule|gaia|browsecomp|simpleqa|hle --judge-url URL --judge-model NAME] [--config YAML]
        [--out DIR] [key.path=value ...]
    python launch/evaluate.py --policy RUN_DIR            # a run's newest checkpoint on the run's held-out split
    python launch/evaluate.py --rescore DIR               # re-score saved predictions; no policy is touched

POLICY: a model folder, a hub name (loaded as transformers loads it; nothing is downloaded by this code), `tiny`,
a run folder (its newest complete checkpoint, rl/checkpoint.py, exported as a model folder; the run's config.json
gives the settings and the evaluation seed is the run's, so the numbers of its report are reproduced), or an
OpenAI-compatible endpoint `http(s)://HOST/v1` (rollout.backend=openai, --served-model, and --tokenizer: the local
folder of the served model's tokenizer).

Output (DIR): tasks.jsonl, trajectories/eval_<name>.parquet (every trajectory), predictions.parquet (one row per
task and run: uid, question, gold, prediction, verdict, reward parts), eval.json (how it was scored) and
results.json (Pass@1 over k runs with its 95% bootstrap interval, Pass@k, the per-run accuracies). `--rescore`
re-runs the stored scoring (rewards, judge) on the stored trajectories and checks every number against
results.json: exit 0 when all agree exactly, 1 otherwise.

Refused before the output folder is made (exit 2, naming the flag or key): --k or --limit below 1, a flag that
does not apply (--judge-url without an LLM judge, --served-model without an endpoint, any other flag with
--rescore), an override no evaluation reads (`NOT_READ`: trainer.*, algo.*, sft.*, run.steps, rollout.mode, ...)
or one that would replace what a flag sets (`check_overrides`), a bad task file (rl/task_files.py), and any error
`load_config` finds in the final settings. Such settings in a `--config` file are named in a warning instead (a
recipe's file serves its training and its evaluation alike).

Never: train or sync weights; download anything; change a number after scoring.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from rl.config import ConfigError, load_config  # noqa: E402

DEFAULT_CONFIG = ROOT / "launch/configs/evaluate.yaml"
JUDGE_KINDS = ("rule", "gaia", "browsecomp", "simpleqa", "hle")
COMPARED = ("pass@1", "pass@1_ci", "pass@k", "pass@k_ci", "per_run", "num_tasks")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch/evaluate.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", help="model folder, hub name, tiny, run folder, or http(s)://host/v1 endpoint")
    p.add_argument("--tasks", help="task file (default for a run folder: its data/heldout.jsonl)")
    p.add_argument("--format", default="auto", help="task file format (rl/task_files.py FORMATS)")
    p.add_argument("--limit", type=int, default=None, help="first N tasks only")
    p.add_argument("--k", type=int, default=None, help="runs per task (default: eval.k)")
    p.add_argument("--name", default=None, help="evaluation name (its seed: derive_seed(run.seed, 'eval', name))")
    p.add_argument("--judge", default=None, choices=JUDGE_KINDS, help="rule judge, or an LLM judge prompt")
    p.add_argument("--judge-url", default=None)
    p.add_argument("--judge-model", default=None)
    p.add_argument("--served-model", default=None, help="endpoint policy: the served model name")
    p.add_argument("--tokenizer", default=None, help="endpoint policy: local folder of the served model's tokenizer")
    p.add_argument("--config", default=None, help=f"YAML (default {DEFAULT_CONFIG.relative_to(ROOT)})")
    p.add_argument("--out", default=None, help="output folder (default runs/eval-<time>)")
    p.add_argument("--ignore-images", action="store_true",
                   help="BC-VL tasks: evaluate on the question text alone (the task's image is not shown)")
    p.add_argument("--rescore", default=None, metavar="DIR", help="re-score the predictions saved in DIR")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = p.parse_args(argv)
    if args.rescore is not None:  # re-scoring reads everything from DIR: any other flag would be ignored
        defaults = vars(p.parse_args([]))
        given = [f"--{k.replace('_', '-')}" if k != "overrides" else "key.path=value overrides"
                 for k, v in vars(args).items() if k != "rescore" and v != defaults[k]]
        if given:
            p.error(f"--rescore re-scores what DIR holds with its stored settings; {', '.join(given)} would be ignored")
        return args
    if args.policy is None:
        p.error("give --policy (and --tasks), or --rescore DIR")
    for flag, value in (("--k", args.k), ("--limit", args.limit)):
        if value is not None and value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if args.judge not in (None, "rule") and not (args.judge_url and args.judge_model):
        p.error(f"--judge {args.judge} is an LLM judge: give --judge-url and --judge-model")
    if args.judge in (None, "rule"):
        for flag, value in (("--judge-url", args.judge_url), ("--judge-model", args.judge_model)):
            if value is not None:
                p.error(f"{flag} is the endpoint of an LLM judge (--judge {'|'.join(JUDGE_KINDS[1:])}); the rule "
                        f"judge{'' if args.judge else ' (the default)'} would ignore it")
    if not args.policy.startswith(("http://", "https://")):
        for flag, value in (("--served-model", args.served_model), ("--tokenizer", args.tokenizer)):
            if value is not None:
                p.error(f"{flag} applies to an endpoint policy (--policy http(s)://HOST/v1); --policy "
                        f"{args.policy!r} would ignore it")
    return args


#: settings no evaluation reads (RLGroups(train=False), launch/stages.py evaluation()) -> why
TRAINS = "launch/evaluate.py does not train"
NOT_READ = {
    **{k: TRAINS for k in ("trainer", "algo", "sft", "pipeline", "run.steps", "run.save_every", "run.keep_last",
                           "run.resume", "run.loggers", "rollout.mode", "rollout.max_staleness",
                           "rollout.partial_rollout", "rollout.seed", "data.batch_size")},
    "run.save_trajectories": f"{TRAINS}, and it always saves the evaluation's trajectories",
    "run.name": "the evaluation's name is --name",
    "rollout.n": "an evaluation runs each task --k times (eval.k)",
    "rollout.temperature": "an evaluation samples at eval.temperature",
    "rollout.top_p": "an evaluation samples with eval.top_p",
    "eval.num_tasks": "the tasks are those of --tasks (--limit N keeps the first N)",
}


def _leaves(key: str, value) -> list[str]:
    """The dotted keys an override sets (`trainer={lr: 1}` sets trainer.lr)."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", v)]
    return [key]


def check_overrides(args) -> None:
    """ConfigError for a key.path=value override that this evaluation would not read (evaluate.py does not train:
    NOT_READ), or that would replace what one of its own flags sets (model.path: --policy; run.dir: --out; the
    task file: --tasks and --limit; eval.k with --k; the scoring with --judge; the engine with an endpoint)."""
    from rl.config import _under, parse_override

    flags = {"model.path": "--policy", "run.dir": "--out", "data.task": "--tasks", "data.path": "--tasks",
             "data.num_tasks": "--tasks (and --limit)"}
    if args.k is not None:
        flags["eval.k"] = "--k"
    if args.judge is not None:
        flags |= {f"reward.{k}": f"--judge {args.judge}" for k in ("fns", "composition", "judge")}
    if args.policy.startswith(("http://", "https://")):
        flags |= {"rollout.backend": "--policy", "rollout.openai": "--policy/--served-model"}
    for text in args.overrides:
        for key in _leaves(*parse_override(text)):
            for prefix, why in NOT_READ.items():
                if _under(key, prefix):
                    raise ConfigError(f"{key!r} (from the command line) would be read by nothing in this evaluation, "
                                      f"so it would be silently ignored: {why}")
            for prefix, flag in flags.items():
                if _under(key, prefix):
                    raise ConfigError(f"{key!r} (from the command line) is what {flag} sets: the override would "
                                      f"replace it and {flag} would be silently ignored; give {flag} alone")


def config_file_unread(path: str | None) -> list[str]:
    """The settings of a --config file that no evaluation reads (`NOT_READ`): a recipe's file serves its training
    and its evaluation alike (as verl's and OpenRLHF's do), so these are named in a warning, not refused."""
    if not path:
        return []
    from rl.config import _given_keys, _under, read_yaml

    tree = read_yaml(path)
    keys = _given_keys(tree) if isinstance(tree, dict) else set()  # a file that is not a mapping: load_config says so
    return sorted(k for k in keys if any(_under(k, prefix) for prefix in NOT_READ))


# --- the policy ---------------------------------------------------------------------------------------


def policy_settings(args) -> tuple[list[str], dict]:
    """Overrides that make `--policy` the policy, and what to remember about it."""
    policy = args.policy
    if policy.startswith(("http://", "https://")):
        if not args.served_model:
            raise ConfigError("--policy is an endpoint: give --served-model (the name it serves)")
        over = ["rollout.backend=openai", f"rollout.openai={json.dumps({'base_url': policy, 'model': args.served_model})}"]
        if not args.tokenizer:
            raise ConfigError("--policy is an endpoint: give --tokenizer, the local folder of the served model's "
                              "tokenizer (the agent loop builds the prompt ids with it)")
        over.append(f"model.path={json.dumps(args.tokenizer)}")
        return over, {"kind": "endpoint", "url": policy, "model": args.served_model}
    if (Path(policy) / "checkpoints").is_dir():
        return [], {"kind": "run", "run_dir": str(Path(policy).resolve())}
    return [f"model.path={json.dumps(policy)}"], {"kind": "model", "path": policy}


def judge_overrides(args) -> list[str]:
    if args.judge in (None, "rule"):
        return []
    # HLE's judge (its yes/no "correct:" line) is the text BrowseComp's official grader was taken from
    # (reward/prompts.py sources): the same prompt and parser
    kind = "browsecomp" if args.judge == "hle" else args.judge
    fns = {"format": {"style": "websailor"}, "judge": {"kind": kind}}
    judge = {"backend": "openai", "base_url": args.judge_url, "model": args.judge_model}
    return [f"reward.fns={json.dumps(fns)}", "reward.composition=websailor", f"reward.judge={json.dumps(judge)}"]


# --- results ------------------------------------------------------------------------------------------


def summarize(correct: np.ndarray, group: np.ndarray, sample: np.ndarray) -> dict:
    """Pass@1 (mean of per-task means; equal to the mean of the per-run accuracies when every task has k runs),
    Pass@k and the accuracy of each run j (over the tasks' j-th samples)."""
    from rl.evaluate import pass_metrics

    out = pass_metrics(correct, group)
    out["per_run"] = [float(correct[sample == j].mean()) for j in np.unique(sample)]
    return out


def predictions(batch, correct: np.ndarray):
    """One row per task and run: what was asked, what the policy answered and the verdict."""
    import pyarrow as pa

    keep = ["group", "sample", "uid", "question", "gold_answer", "answer_text", "finish", "num_turns",
            "num_tool_calls", "reward"] + [c for c in batch.schema.names if c.startswith("reward_")]
    cols = {("run" if c == "sample" else "task" if c == "group" else "prediction" if c == "answer_text" else c):
            batch.column(c) for c in keep if c in batch.schema.names}
    cols["verdict"] = pa.array(correct.astype(np.int8))
    return pa.table(cols)


def score_batch(batch, scoring: dict, correct_part: str, threshold: float = 1.0) -> tuple[np.ndarray, object]:
    """The stored scoring run again, in this process, on a trajectory batch -> (correct per row, scored batch)."""
    from reward.worker import RewardWorker
    from rollout.trajectory import project, reward_part_column, scalar_numpy, with_columns

    worker = RewardWorker(scoring["rewards"], scoring["composition"], scoring["judge"])
    try:
        parts = worker.score(project(batch, worker.columns))
    finally:
        if worker.judge is not None:
            worker.judge.close()
    scored = with_columns(batch, {n: parts.column(n) for n in parts.schema.names})
    column = correct_part if correct_part in scored.schema.names else reward_part_column(scored, correct_part, "rescore")
    return (scalar_numpy(scored, column) >= threshold).astype(np.float64), scored


def rescore(folder: Path) -> int:
    import pyarrow.parquet as pq

    from rollout.trajectory import scalar_numpy

    meta = json.loads((folder / "eval.json").read_text())
    stored = json.loads((folder / "results.json").read_text())
    batch = pq.read_table(folder / meta["trajectories"]).combine_chunks().to_batches()[0]
    correct, _ = score_batch(batch, meta["scoring"], meta["correct_part"], meta["threshold"])
    again = summarize(correct, scalar_numpy(batch, "group"), scalar_numpy(batch, "sample"))
    verdicts = pq.read_table(folder / "predictions.parquet").column("verdict").to_numpy()
    diffs = [f"{k}: stored {stored[k]} != re-scored {again[k]}" for k in COMPARED
             if json.loads(json.dumps(again[k])) != stored[k]]
    if not np.array_equal(verdicts, correct.astype(np.int8)):
        diffs.append(f"verdicts: {int((verdicts != correct).sum())} of {len(verdicts)} differ")
    (folder / "rescore.json").write_text(json.dumps({k: again[k] for k in COMPARED} | {"differences": diffs}, indent=1))
    print(f"re-scored {len(correct)} predictions: Pass@1 {again['pass@1']:.4f}, Pass@{meta['k']} {again['pass@k']:.4f}, "
          f"per run {again['per_run']}")
    if diffs:
        print("DIFFERENT from the stored results:\n  " + "\n  ".join(diffs))
        return 1
    print("every stored number reproduced exactly")
    return 0


def run_eval(args) -> int:
    """Check every setting (with the tasks written to a temporary file), then make the output folder, export a run's
    checkpoint, and evaluate: bad input fails before anything is created or started."""
    from launch.stages import evaluation
    from rl.export import export_checkpoint, run_overrides
    from rl.groups import RLGroups
    from rl.task_files import load_task_file, write_tasks
    from rl.tasks import scoring

    check_overrides(args)
    unread = config_file_unread(args.config)
    if unread:
        shown = ", ".join(unread[:6]) + (f" and {len(unread) - 6} more" if len(unread) > 6 else "")
        print(f"warning: --config {args.config}: {len(unread)} setting(s) no evaluation reads are not used: {shown} "
              f"(launch/evaluate.py does not train; evaluations sample eval.k at eval.temperature)", file=sys.stderr,
              flush=True)
    out = Path(args.out or ROOT / "runs" / f"eval-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    over, policy = policy_settings(args)
    base = args.config or (None if policy["kind"] == "run" else DEFAULT_CONFIG)
    ran = None
    if policy["kind"] == "run":
        run_dir = Path(policy["run_dir"])
        over = run_overrides(run_dir)
        ran = load_config(None, over)
        stages = [s[5:] for s in json.loads((run_dir / "config.json").read_text())["pipeline"]["stages"]
                  if s.startswith("eval_")]
        args.name = args.name or (stages[-1] if stages else "eval")
        if not args.tasks:
            args.tasks = str(run_dir / "data" / "heldout.jsonl")
    if not args.tasks:  # the config's own task file (the default: launch/configs/wiki_qa_sample.jsonl)
        path = load_config(base, check_inputs=False).data.path if base else None
        if not path:
            raise ConfigError("give --tasks FILE")
        args.tasks = str(path if Path(path).is_absolute() or Path(path).exists() else ROOT / path)
    tasks = load_task_file(args.tasks, args.format, args.limit)
    images = any("image_path" in t for t in tasks)
    if images and not args.ignore_images:
        raise ConfigError(f"{args.tasks}: the tasks carry images (image_path) and a task question's image is not an "
                          "input of the agent loop yet; --ignore-images evaluates the question text alone")
    if args.ignore_images and not images:
        raise ConfigError(f"--ignore-images: no task of {args.tasks} carries an image (image_path), so it would be "
                          "silently ignored")
    own_task = ran is not None and ran.data.task.endswith("_qa")  # a run on its own task keeps its scoring
    rest = ([f"eval.k={args.k}"] if args.k is not None else []) + judge_overrides(args) + list(args.overrides)

    def settings(model: list[str], task_file: Path) -> list[str]:
        data = [] if own_task else ["data.task=file", f"data.path={json.dumps(str(task_file))}",
                                    f"data.num_tasks={len(tasks)}"]
        return model + [f"run.dir={json.dumps(str(out))}"] + data + rest

    with tempfile.TemporaryDirectory() as tmp:  # every setting checked before the output folder exists
        load_config(base, settings(over, write_tasks(tasks, Path(tmp) / "tasks.jsonl")))
    out.mkdir(parents=True, exist_ok=True)
    if ran is not None:
        path, step = export_checkpoint(run_dir, ran, out)
        over = [o for o in over if not o.startswith(("model.path=", "model.tokenizer=", "model.tiny="))]
        over.append(f"model.path={json.dumps(str(path))}")
        policy |= {"checkpoint_step": step, "model": str(path)}
    if not own_task:
        write_tasks(tasks, out / "tasks.jsonl")
    cfg = load_config(base, settings(over, out / "tasks.jsonl"))
    name = args.name or "eval"
    print(f"evaluating {policy} on {len(tasks)} tasks of {args.tasks} (k = {cfg.eval.k}); output: {out}", flush=True)
    groups = RLGroups(cfg, train=False)
    keys = ("uid", "question", "answer", "gold_ids")
    try:
        result = evaluation(cfg, groups, [{k: t[k] for k in keys if k in t} for t in tasks], name, out)
    finally:
        groups.shutdown()
    trajectories = f"trajectories/eval_{name}.parquet"
    how = scoring(cfg)
    meta = {"name": name, "policy": policy, "tasks": str(args.tasks), "k": cfg.eval.k, "scoring": how,
            "correct_part": cfg.reward.correct_part, "threshold": 1.0, "trajectories": trajectories,
            "sampling": {"temperature": cfg.eval.temperature, "top_p": cfg.eval.top_p, "seed_of": ["run.seed", name]}}
    results = record(out, meta, result)
    print(f"Pass@1 {results['pass@1']:.4f} (95% CI {results['pass@1_ci'][0]:.4f}-{results['pass@1_ci'][1]:.4f}), "
          f"Pass@{cfg.eval.k} {results['pass@k']:.4f}, per run {results['per_run']}; {out}/results.json", flush=True)
    return 0


def record(out: Path, meta: dict, result: dict | None = None) -> dict:
    """From the trajectories an evaluation saved (meta["trajectories"]): predictions.parquet, eval.json and
    results.json (`result`, the evaluation's own numbers, checked against the saved rows; None: computed here)."""
    import pyarrow.parquet as pq

    from rollout.trajectory import reward_part_column, scalar_numpy

    (out / "eval.json").write_text(json.dumps(meta, indent=1))
    batch = pq.read_table(out / meta["trajectories"]).combine_chunks().to_batches()[0]
    part = meta["correct_part"]
    column = part if part in batch.schema.names else reward_part_column(batch, part, "evaluation")
    correct = (scalar_numpy(batch, column) >= meta["threshold"]).astype(np.float64)
    pq.write_table(predictions(batch, correct), out / "predictions.parquet")
    summary = summarize(correct, scalar_numpy(batch, "group"), scalar_numpy(batch, "sample"))
    result = summary if result is None else result
    if summary["pass@1"] != result["pass@1"] or summary["pass@k"] != result["pass@k"]:
        raise RuntimeError(f"the saved trajectories give Pass@1 {summary['pass@1']}, the evaluation said "
                           f"{result['pass@1']}: the parquet does not hold what was scored")
    results = {k: v for k, v in result.items() if k != "by_tag"} | {"per_run": summary["per_run"]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.rescore:
            return rescore(Path(args.rescore))
        return run_eval(args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
