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

Never: train or sync weights; download anything; change a number after scoring.
"""

from __future__ import annotations

import argparse
import json
import sys
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
    if args.rescore is None and args.policy is None:
        p.error("give --policy (and --tasks), or --rescore DIR")
    if args.judge not in (None, "rule") and not (args.judge_url and args.judge_model):
        p.error(f"--judge {args.judge} is an LLM judge: give --judge-url and --judge-model")
    return args


# --- the policy ---------------------------------------------------------------------------------------


def policy_settings(args, out: Path) -> tuple[list[str], dict]:
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
    from launch.stages import evaluation
    from rl.export import export_checkpoint, run_overrides
    from rl.groups import RLGroups
    from rl.task_files import load_task_file, write_tasks
    from rl.tasks import scoring

    out = Path(args.out or ROOT / "runs" / f"eval-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    over, policy = policy_settings(args, out)
    base = args.config or (None if policy["kind"] == "run" else DEFAULT_CONFIG)
    if policy["kind"] == "run":
        run_dir = Path(policy["run_dir"])
        over = run_overrides(run_dir)
        ran = load_config(None, over)
        path, step = export_checkpoint(run_dir, ran, out)
        over = [o for o in over if not o.startswith(("model.path=", "model.tokenizer=", "model.tiny="))]
        over.append(f"model.path={json.dumps(str(path))}")
        policy |= {"checkpoint_step": step, "model": str(path)}
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
    if any("image_path" in t for t in tasks) and not args.ignore_images:
        raise ConfigError(f"{args.tasks}: the tasks carry images (image_path) and a task question's image is not an "
                          "input of the agent loop yet; --ignore-images evaluates the question text alone")
    over = over + [f"run.dir={json.dumps(str(out))}"]
    if policy["kind"] != "run" or not ran.data.task.endswith("_qa"):  # a run on its own task keeps its scoring
        write_tasks(tasks, out / "tasks.jsonl")
        over += ["data.task=file", f"data.path={json.dumps(str(out / 'tasks.jsonl'))}", f"data.num_tasks={len(tasks)}"]
    if args.k:
        over.append(f"eval.k={args.k}")
    cfg = load_config(base, over + judge_overrides(args) + list(args.overrides))
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
