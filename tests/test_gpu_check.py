"""scripts/gpu_check.py, the device check of the GPU path, runs here as its CPU twin under the conditions of the
device machine (no Ray, vLLM or msgspec importable): every part passes on CPU or says SKIP for what
only a GPU can show; none passes silently."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from launch.common import ROOT

# (DeepSpeed is not blocked: it is installed here, and transformers imports what its metadata says is installed;
# on the device machine it is simply absent, which transformers handles)
BLOCKED = ("ray", "vllm", "msgspec", "bm25s", "faiss")

PRELUDE = f"""
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("not on the device machine: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["scripts/gpu_check.py", "--cpu", "--out", sys.argv[1]]
runpy.run_path("scripts/gpu_check.py", run_name="__main__")
"""


@pytest.mark.slow
def test_device_check_runs_as_its_cpu_twin_without_the_packages_the_gpu_machine_lacks(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-c", PRELUDE, str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = {r["part"]: r["status"] for r in json.loads(out.read_text())}
    assert len(status) == 5
    assert status["imports without Ray, vLLM or msgspec"] == "PASS"
    assert status["chunked logprobs at the 7B vocabulary and token budget"] == "SKIP"
    assert sorted(v for k, v in status.items() if "imports" not in k and "7B" not in k) == ["PASS-CPU"] * 3
    assert "vLLM on GPU: not verified" in proc.stdout


def test_a_part_past_its_limit_fails_by_name_with_the_stacks_and_the_results_so_far(tmp_path):
    out = tmp_path / "results.json"
    code = f"""
import sys, time
sys.argv = ["gpu_check"]
sys.path.insert(0, "scripts")
import gpu_check as g
from pathlib import Path
g.OUT.append(Path({str(out)!r}))
g.run("a quick part", 5, lambda: {{"n": 1}})
g.run("a hung part", 0.5, time.sleep, 30)
print("not reached")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "not reached" not in proc.stdout, proc.stdout + proc.stderr
    assert "[FAIL] a hung part: error=did not finish within 0.5 s" in proc.stdout
    assert "most recent call first" in proc.stderr and "gpu_check.py" in proc.stderr  # every thread's stack
    assert [(r["part"], r["status"]) for r in json.loads(out.read_text())] == [("a quick part", "PASS"),
                                                                              ("a hung part", "FAIL")]
