"""The device check of the GPU path, driving the plain worker classes in one process (no Ray, no vLLM).

What a real GPU run takes that the CPU suite cannot show, each part printed as PASS / FAIL / SKIP with its
numbers:
  1. the project imports under the machine's Python and torch (no Ray, vLLM or msgspec needed);
  2. an FSDP2 train step and an SFT step in bf16 (world size 1, NCCL on a GPU, gloo on CPU) with packing and the
     fastest attention torch offers (flash-attention 2 only if it imports, else SDPA);
  3. the chunked logprob kernel at the 7B config's vocabulary (152,064) and token budget (32,768) with hidden
     3,584 in bf16: values against the full log-softmax on a slice, and the measured peak memory of a forward
     and backward against the plan (`rl.trainer.logprobs.logprob_memory_bytes`, what `--dry-run` counts);
  4. the HF engine on the device generating a multi-turn group (a tool call every turn) at temperature 1:
     the samples differ;
  5. the weight-bucket path: the trainer's state streamed as buckets into a second model copy (the HF engine),
     whose outputs then equal the trainer's.
On a machine without a GPU it runs parts 1, 2, 4 and 5 at tiny sizes and says SKIP for what only a GPU can show
(NCCL, bf16 kernels, the 7B-size logprob memory): a check that passed on CPU is not a GPU result. vLLM on GPU
is not covered (the device machine has no vLLM).

    bash scripts/gpu_check.sh            # on the GPU machine: python3 scripts/gpu_check.py
    python scripts/gpu_check.py --cpu    # the CPU twin (tests/test_gpu_check.py runs it)
Exit status 1 if any part failed. Each part has its own time limit (`LIMIT_S`, 470 s in all, inside the shell
script's 480): a part past it is reported FAIL by name with every thread's stack, the results so far are
written (--out), and the check ends there (a hung CUDA or NCCL call cannot be interrupted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS: list[dict] = []
OUT: list[Path] = []  # --out, written after every part
#: seconds each part may take (on CPU and on one GPU; building the tiny model is the first)
LIMIT_S = {"model": 40, "imports": 30, "train": 150, "logprobs": 100, "engine": 90, "buckets": 60}


def report(part: str, status: str, **numbers) -> None:
    RESULTS.append({"part": part, "status": status, **numbers})
    shown = ", ".join(f"{k}={v}" for k, v in numbers.items())
    print(f"[{status}] {part}" + (f": {shown}" if shown else ""), flush=True)
    for path in OUT:
        path.write_text(json.dumps(RESULTS, indent=1))


def run(part: str, limit_s: float, fn, *args, quiet: bool = False):
    """Run one part and report it (`quiet`: a step the parts need, reported only if it fails); past `limit_s`
    report it FAIL by name, dump every thread's stack and end the check (exit 1). Returns what the part returned
    (None if it failed)."""
    import faulthandler
    import threading

    def expired():
        report(part, "FAIL", error=f"did not finish within {limit_s} s (stacks of every thread below)")
        faulthandler.dump_traceback(all_threads=True)
        sys.stdout.flush()
        os._exit(1)

    timer = threading.Timer(limit_s, expired)
    timer.daemon = True
    t0 = time.perf_counter()
    timer.start()
    try:
        out = fn(*args)
        numbers = dict(out) if isinstance(out, dict) else {}
        status = numbers.pop("status", "PASS")
        if not quiet:
            report(part, status, seconds=round(time.perf_counter() - t0, 1), **numbers)
        return out
    except Exception as err:  # a failing part is reported and the others still run
        traceback.print_exc()
        report(part, "FAIL", error=f"{type(err).__name__}: {err}"[:300])
        return None
    finally:
        timer.cancel()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(folder: Path) -> str:
    """A random-init Qwen3 built from a config, its BPE trained here (no download)."""
    from rl.models import build_tiny_model

    return str(build_tiny_model(cache_dir=folder, tokenizer="local", vocab_size=512, hidden_size=64, num_layers=2,
                                intermediate_size=128))


def part_imports() -> dict:
    import importlib

    import torch

    mods = ["rl.trainer.fsdp", "rl.trainer.logprobs", "rl.memory_plan", "rollout.engines.hf_engine", "rollout.worker",
            "rollout.formats.react", "envs.base", "rl.models"]
    for m in mods:
        importlib.import_module(m)
    return {"python": platform.python_version(), "torch": torch.__version__, "modules": len(mods)}


def _trainer(model: str, gpu: bool, **kw):
    from rl.trainer.fsdp import FSDPTrainer

    os.environ.setdefault("LOCAL_RANK", "0")
    t = FSDPTrainer(model, rank=0, world_size=1, lr=1e-3, micro_batch_size=4, token_budget=512, packing=True,
                    dtype="bfloat16" if gpu else "float32", algo={"loss_agg_mode": "token-mean", "kl_coef": 0.0},
                    **kw)
    t.init_distributed("127.0.0.1", free_port())
    return t


def _batch(vocab: int, rows: int = 8, seed: int = 0):
    import numpy as np

    from rollout.engines import Generation
    from rollout.trajectory import build_batch, record_from_generation, with_columns

    rng = np.random.default_rng(seed)
    recs = []
    for i in range(rows):
        p, r = int(rng.integers(4, 20)), int(rng.integers(4, 40))
        gen = Generation(rng.integers(5, vocab, r).tolist(), [-3.0] * r, "length")
        recs.append(record_from_generation(f"u{i}", i // 2, i % 2, rng.integers(5, vocab, p).tolist(), gen))
    adv = np.where(np.arange(rows) % 2 == 0, 1.0, -1.0).astype(np.float32)
    return with_columns(build_batch(recs), {"advantage": adv})


def part_train(model: str, gpu: bool) -> dict:
    import numpy as np
    import torch

    t = _trainer(model, gpu)
    try:
        batch = _batch(t.model.config.vocab_size)
        sft = t.sft_step(batch)
        rl = t.train_step(batch, on_policy=True)
        ok = all(np.isfinite(v) for v in (sft["sft/loss"], rl["train/loss"], rl["train/grad_norm"]))
        backend = torch.distributed.get_backend()
        out = {"backend": backend, "attention": t.attn, "dtype": t.dtype, "sft_loss": round(sft["sft/loss"], 4),
               "rl_grad_norm": round(rl["train/grad_norm"], 4), "old_logprob_pass": rl["train/old_logprob_pass"]}
        if not ok:
            out["status"] = "FAIL"
        elif not gpu:
            out["status"] = "PASS-CPU"  # gloo and fp32: the logic, not NCCL or bf16 kernels
        return out
    finally:
        t.shutdown()


def part_logprob_memory(gpu: bool) -> dict:
    import torch

    from rl.trainer.logprobs import DEFAULT_CHUNK_BYTES, logprob_memory_bytes, selective_logprobs

    if not gpu:
        return {"status": "SKIP", "why": "the 7B-size kernel (152,064 x 3,584 bf16 head, 32,768 tokens) runs on a GPU only"}
    vocab, tokens, hidden = 152_064, 32_768, 3584
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    h = (torch.randn(tokens, hidden, device=dev, dtype=torch.bfloat16, generator=g) * 0.05).requires_grad_()
    w = (torch.randn(vocab, hidden, device=dev, dtype=torch.bfloat16, generator=g) * 0.02).requires_grad_()
    t = torch.randint(0, vocab, (tokens,), device=dev, generator=g)
    # values against the full log-softmax on a slice small enough to hold its logits
    n = 512
    lp, ent = selective_logprobs(h[:n], w, t[:n], with_entropy=True)
    z = (h[:n] @ w.T).float()
    ref = z.log_softmax(-1).gather(-1, t[:n, None]).squeeze(-1)
    err = float((lp - ref).abs().max())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    lp, _ = selective_logprobs(h, w, t, with_entropy=True)
    lp.float().mean().backward()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    # the kernel's own peak: what it allocated beyond its inputs, less the gradients it returns (h and w's)
    grads = h.grad.numel() * h.grad.element_size() + w.grad.numel() * w.grad.element_size()
    peak = torch.cuda.max_memory_allocated() - base - grads
    plan = logprob_memory_bytes(vocab=vocab, tokens=tokens, hidden=hidden, chunked=True, chunk_bytes=DEFAULT_CHUNK_BYTES)
    full = logprob_memory_bytes(vocab=vocab, tokens=tokens, hidden=hidden, chunked=False)
    tokens_per_s = tokens / seconds
    status = "PASS" if err < 2e-2 and peak <= 1.5 * plan else "FAIL"
    return {"status": status, "max_abs_err_vs_full": round(err, 5), "peak_gib": round(peak / 2**30, 3),
            "plan_gib": round(plan / 2**30, 3), "full_softmax_would_need_gib": round(full / 2**30, 1),
            "fwd_bwd_s": round(seconds, 2), "tokens_per_s": int(tokens_per_s)}


def part_engine_group(model: str, gpu: bool) -> dict:
    from envs.base import LocalEnv, Observation
    from rollout.formats import FORMATS
    from rollout.formats.react import Action, ReActFormat
    from rollout.worker import RolloutWorker

    class EveryTurnCalls(ReActFormat):
        """Every model turn calls the `wait` tool (a random-init policy writes no tool calls)."""

        def parse(self, text):
            return Action("tool_call", name="wait", arguments={})

    class Wait:
        name = "wait"
        schema = {"name": "wait", "description": "waits", "parameters": {"type": "object", "properties": {}}}

        async def call(self, arguments):
            return Observation("waited")

    sys.modules[__name__].EveryTurnCalls = EveryTurnCalls
    FORMATS["gpu_check_every_turn"] = f"{__name__}:EveryTurnCalls"
    w = RolloutWorker("hf", model, {"dtype": "bfloat16" if gpu else "float32", "device": "cuda" if gpu else "cpu"},
                      env=LocalEnv([Wait()], timeout_s=60),
                      agent={"format": "gpu_check_every_turn", "max_tool_calls": 2, "max_tokens_per_turn": 8,
                             "max_context_tokens": 1024})
    task = {"uid": "q", "group": 0, "question": "Who founded the city?"}
    batch = asyncio.run(w.run_group(task, 8, {"max_tokens": 8, "temperature": 1.0, "seed": 7}))
    own = [tuple(t for t, m in zip(ids, mask) if m) for ids, mask in
           zip(batch.column("response_ids").to_pylist(), batch.column("loss_mask").to_pylist())]
    distinct = len(set(own))
    out = {"samples": len(own), "distinct": distinct, "turns": batch.column("num_turns").to_pylist()[0]}
    out["status"] = ("PASS" if gpu else "PASS-CPU") if distinct == len(own) else "FAIL"
    return out


def part_weight_buckets(model: str, gpu: bool) -> dict:
    import torch

    from rollout.engines.hf_engine import HFEngine

    t = _trainer(model, gpu)
    try:
        with torch.no_grad():  # move the trainer away from the engine's copy
            for p in t.model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        engine = HFEngine(model, dtype="float32", device="cuda" if gpu else "cpu")
        ids = torch.tensor([[1, 5, 9, 13, 17, 21]], device=engine.device)
        before = engine.model(ids).logits.float()
        buckets = list(t.iter_state_buckets(1 << 16))  # small buckets: several of them
        asyncio.run(engine.update_weights(buckets, version=1))
        after = engine.model(ids).logits.float()
        full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in t.model.state_dict().items()}
        want = None
        with torch.no_grad():
            from transformers import AutoModelForCausalLM

            copy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).to(engine.device)
            copy.load_state_dict({k: v.float() for k, v in full.items()}, strict=False)
            want = copy(ids).logits.float()
        err = float((after - want).abs().max())
        moved = float((after - before).abs().max())
        ok = err < (2e-2 if gpu else 1e-5) and moved > 1e-4
        return {"buckets": len(buckets), "max_abs_err": round(err, 6), "moved": round(moved, 4),
                "status": ("PASS" if gpu else "PASS-CPU") if ok else "FAIL"}
    finally:
        t.shutdown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run the CPU twin even if a GPU is visible")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available() and not args.cpu
    print(f"device check on {'GPU ' + torch.cuda.get_device_name(0) if gpu else 'CPU (GPU-only parts SKIP)'}",
          flush=True)
    if args.out:
        OUT.append(Path(args.out))
    L = LIMIT_S
    run("imports without Ray, vLLM or msgspec", L["imports"], part_imports)
    with tempfile.TemporaryDirectory(prefix="windward-gpu-check-") as tmp:
        model = run("the tiny model (built here, no download)", L["model"], tiny_model, Path(tmp), quiet=True)
        if model is not None:
            run("FSDP2 SFT + RL step (bf16 on GPU, packing, best attention)", L["train"], part_train, model, gpu)
        run("chunked logprobs at the 7B vocabulary and token budget", L["logprobs"], part_logprob_memory, gpu)
        if model is not None:
            run("HF engine: a multi-turn group at temperature 1 has distinct samples", L["engine"], part_engine_group,
                model, gpu)
            run("weight buckets into a second model copy", L["buckets"], part_weight_buckets, model, gpu)
    print("vLLM on GPU: not verified (no vLLM on the device machine)", flush=True)
    failed = [r["part"] for r in RESULTS if r["status"] == "FAIL"]
    print(f"device check: {len(RESULTS) - len(failed)} of {len(RESULTS)} parts without failure"
          + (f"; FAILED: {failed}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
