"""Windward vs TRL's GRPOTrainer at equal work, one machine, one run at a time.

Both sides: the same model folder (the tiny Qwen3 on the real Qwen3 tokenizer, about 10 M parameters, most of
them in the 151,669-row embedding), the same prompts (the spine's target-token task: "write the word 'the' as
often as you can"), the same batch (P prompts x 8 samples x T new tokens at temperature 1), lr 1e-3, GRPO with
beta 0 (no reference model), sequence-mean token-mean loss, one optimizer update per batch, fp32, the same
reward (the fraction of generated tokens equal to the target token).
  windward - `rl.controller.train` on the spine config: one vLLM-CPU engine, one FSDP2 rank (gloo), the reward
             group, sync mode, `ray.placement` as given (auto: colocated on one node);
  trl      - TRL's GRPOTrainer (HF `generate`, one process, all cores), per_device_train_batch_size 32 and
             gradient accumulation P*8/32, so one generation and one optimizer step per batch (its on-policy
             path: no old-logprob pass, as Windward's).
Each side runs in its own process, one after the other; the first `--warmup` steps of each are not counted
(engine start-up, allocator warm-up). Per side: seconds per step (median over the counted steps) and where it
goes. Windward's phases are its `time/*` metrics; TRL's are the time inside `_generate_and_score_completions`
(generation, reward, advantages) and the rest of the step (forward, backward, optimizer).

    python benchmarks/vs_trl.py [--quick] [--placement auto|colocated|split]
        last line: windward_vs_trl=<TRL seconds per step / Windward seconds per step>

TRL is a benchmark dependency, not a runtime one: `pip install -e .[bench]` (TRL 1.16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDE_TIMEOUT_S = 3600  # one side (its own process) at most; --quick takes about 2 minutes a side here
sys.path.insert(0, str(ROOT))

WORD = "the"


def sizes(quick: bool) -> dict:
    return dict(prompts=8, samples=8, tokens=32, warmup=1, steps=2) if quick else \
        dict(prompts=32, samples=8, tokens=64, warmup=1, steps=3)


def model_folder() -> str:
    from rl.models import build_tiny_model

    return str(build_tiny_model(tokenizer="qwen3"))


def run_windward(s: dict, placement: str) -> dict:
    import ray

    from rl.config import load_config
    from rl.controller import train

    cfg = load_config(ROOT / "launch/configs/spine.yaml", [
        "model.tokenizer=qwen3", "rollout.backend=vllm", "rollout.num_engines=1", f"rollout.n={s['samples']}",
        f"rollout.max_tokens={s['tokens']}", "rollout.temperature=1.0", "trainer.num_ranks=1", "trainer.lr=1e-3",
        "trainer.micro_batch_size=32", "algo.preset=grpo", "algo.kl_coef=0", "algo.loss_agg_mode=seq-mean-token-mean",
        f"data.target_token={WORD}", f"data.num_tasks={s['prompts']}", f"data.batch_size={s['prompts']}",
        f"run.steps={s['warmup'] + s['steps']}", "run.progress=false", "run.save_trajectories=false",
        f"ray.placement={placement}"])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            hist = train(cfg, Path(tmp))["history"]
        finally:
            ray.shutdown()
    counted = hist[s["warmup"]:]
    phases = ("generate", "reward", "logprobs", "update", "sync")
    return {"step_s": [h["time/step"] for h in counted],
            "phases": {p: statistics.median(h.get(f"time/{p}", 0.0) for h in counted) for p in phases},
            "reward": [h["reward/mean"] for h in hist]}


def run_trl(s: dict) -> dict:
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is not installed: pip install -e .[bench] (TRL 1.16 is a benchmark dependency)")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    path = model_folder()
    tok = AutoTokenizer.from_pretrained(path)
    token_id = next(ids[0] for form in (WORD, " " + WORD)
                    if len(ids := tok.encode(form, add_special_tokens=False)) == 1)
    # the spine's prompts (rl/data.py target_token_tasks), as conversations TRL templates the same way
    rows = [{"prompt": [{"role": "user", "content": f"Task {i}: write the word '{WORD}' as often as you can."}]}
            for i in range(s["prompts"])]

    def target_token(completions, completion_ids, **_):
        return [sum(t == token_id for t in ids) / max(len(ids), 1) for ids in completion_ids]

    batch = s["prompts"] * s["samples"]
    micro = min(32, batch)
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), use_cpu=True, bf16=False, fp16=False,
        learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, max_grad_norm=1.0, beta=0.0, num_iterations=1, loss_type="grpo", scale_rewards="group",
        num_generations=s["samples"], per_device_train_batch_size=micro, gradient_accumulation_steps=batch // micro,
        max_completion_length=s["tokens"], temperature=1.0, top_p=1.0, use_vllm=False,
        max_steps=s["warmup"] + s["steps"], logging_steps=1, save_strategy="no", report_to="none", seed=0,
        dataloader_num_workers=0, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=target_token, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok)
    gen_s: list[float] = []
    inner = trainer._generate_and_score_completions

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = inner(*a, **k)
        gen_s.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed
    marks: list[float] = []
    rewards: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            marks.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            marks.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))

    trainer.add_callback(Clock())
    trainer.train()
    steps = [b - a for a, b in zip(marks[::2], marks[1::2])]
    counted = slice(s["warmup"], None)
    gen = gen_s[counted]
    step_s = steps[counted]
    return {"step_s": step_s, "phases": {"generate+reward": statistics.median(gen),
                                         "update": statistics.median(t - g for t, g in zip(step_s, gen))},
            "reward": rewards}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="8 prompts x 8 samples x 32 tokens, 2 counted steps")
    p.add_argument("--placement", default="auto", choices=["auto", "colocated", "split"])
    p.add_argument("--side", choices=["windward", "trl"], help=argparse.SUPPRESS)  # one side, in a child process
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    s = sizes(args.quick)
    if args.side:
        out = run_windward(s, args.placement) if args.side == "windward" else run_trl(s)
        Path(args.out).write_text(json.dumps(out))
        return
    model_folder()  # built once, before either side's clock
    print(f"equal work: {s['prompts']} prompts x {s['samples']} samples x {s['tokens']} tokens, lr 1e-3, GRPO beta 0, "
          f"one update per batch; {s['warmup']} warm-up + {s['steps']} counted steps per side", flush=True)
    results = {}
    for side in ("windward", "trl"):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, __file__, "--side", side, "--out", f.name, "--placement", args.placement] \
                + (["--quick"] if args.quick else [])
            t0 = time.perf_counter()
            try:
                subprocess.run(cmd, check=True, cwd=ROOT, timeout=SIDE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise SystemExit(f"the {side} side did not finish within {SIDE_TIMEOUT_S} s") from None
            results[side] = json.loads(Path(f.name).read_text())
            print(f"{side}: ran in {time.perf_counter() - t0:.0f} s (start-up included)", flush=True)
    for side, r in results.items():
        med = statistics.median(r["step_s"])
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
        print(f"{side:9s} s/step {med:7.1f} (steps {', '.join(f'{x:.1f}' for x in r['step_s'])}); "
              f"phases (median s): {phases}; reward by step {[round(x, 3) for x in r['reward']]}")
    ratio = statistics.median(results["trl"]["step_s"]) / statistics.median(results["windward"]["step_s"])
    print(f"windward_vs_trl={ratio:.2f}")


if __name__ == "__main__":
    main()
