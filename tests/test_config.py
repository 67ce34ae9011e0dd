"""Configuration: bad keys, types and values fail with one clear message and exit code 2,
before any actor starts; so do the dict-typed sections (checked by dry runs of their builders), YAML
that is too large, not UTF-8 or expands past its limits, and settings nothing in the run would read."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launch.common import ROOT
from rl.config import Config, ConfigError, describe, load_config, parse_override

WEBSAILOR = ROOT / "launch/configs/websailor.yaml"
SPINE = ROOT / "launch/configs/spine.yaml"


def qa_file(folder: Path, rows: int = 4) -> Path:
    """A valid task file of {uid, question, answer} rows."""
    path = folder / "tasks.jsonl"
    path.write_text("".join(json.dumps({"uid": f"q{i}", "question": f"what is {i}?", "answer": str(i)}) + "\n"
                            for i in range(rows)))
    return path


def test_defaults_and_overrides():
    cfg = load_config(WEBSAILOR, ["trainer.lr=1e-6", "run.steps=3", "rollout.backend=hf", "trainer.betas=[0.8, 0.9]"])
    assert isinstance(cfg, Config)
    assert cfg.trainer.lr == 1e-6 and cfg.run.steps == 3 and cfg.rollout.backend == "hf"
    assert cfg.trainer.betas == (0.8, 0.9)
    assert cfg.rollout.n == 8 and cfg.data.task == "world_qa"  # from the file


@pytest.mark.parametrize("override, expect", [
    ("algo.lrr=1", ["unknown key 'algo.lrr'", "command line", "clip_low"]),
    ("trainer.lr=-1", ["'trainer.lr'", "> 0", "-1"]),
    ("trainer.lr=abc", ["'trainer.lr'", "float"]),
    ("rollout.backend=sglang", ["'rollout.backend'", "'vllm'", "'hf'"]),
    ("rollout.n=1", ["'rollout.n'", ">= 2"]),
    ("data.qa_anchor_rate=0", ["data.qa_one_page", "data.qa_anchor_rate > 0"]),
    ("nosection.x=1", ["unknown key 'nosection'", "trainer"]),
    ("algo=3", ["'algo'", "keys"]),
    ("run.steps", ["key.path=value"]),
])
def test_bad_overrides_name_the_key(override, expect):
    with pytest.raises(ConfigError) as err:
        load_config(WEBSAILOR, [override])
    for fragment in expect:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_bad_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  lr: 1e-3\n  warmup: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "unknown key 'trainer.warmup'" in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=1e-6") == ("a.b", "1e-6")  # YAML 1.1: converted by msgspec later
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_help_lists_every_key():
    lines = "\n".join(describe())
    for key in ("trainer.lr", "rollout.backend", "algo.clip_high", "run.dir", "data.target_token"):
        assert key in lines


def test_cli_exits_2_before_any_actor(tmp_path):
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "launch/websailor.py"), "algo.clip_hihg=0.3",
                           f"run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "unknown key 'algo.clip_hihg'" in proc.stderr
    assert "run folder" not in proc.stdout  # nothing started
    assert not (tmp_path / "run").exists()
    assert time.time() - t0 < 60


def test_cli_help_lists_configuration():
    proc = subprocess.run([sys.executable, str(ROOT / "launch/websailor.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "trainer.lr=" in proc.stdout and "rollout.backend=" in proc.stdout


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "launch/configs").glob("*.yaml") if p.name != "smoke.yaml"))
def test_every_shipped_config_loads(name, tmp_path):
    """Each recipe's config (smoke.yaml is an overlay, applied by --smoke) validates as a whole, with and without
    the --smoke overlay. A config naming a data file of another machine (the multi-node one) loads as it is
    without the input checks, and with them once that file is there."""
    from launch.common import SMOKE, merged_overrides

    path = ROOT / "launch/configs" / name
    data = (yaml.safe_load(path.read_text()).get("data") or {}).get("path")
    extra = [f"data.path={qa_file(tmp_path)}"] if data and not Path(data).exists() else []
    cfg = load_config(path, extra)
    assert cfg.run.steps >= 1
    assert load_config(path, extra, overlay=merged_overrides(path, SMOKE)).run.name == "smoke"
    assert load_config(path, check_inputs=False).data.path == data


# --- the "Why", one test each (each failed before the config edge checked it) -------------------


@pytest.mark.parametrize("override, expect", [
    ("env.tools.search.topk=3", ["'env.tools'", "command line", "'topk'", "top_k"]),
    ("env.tools.search.top_k=many", ["'env.tools'", "'top_k'", "int"]),
    ("env.tools={search: {backend: bm25}}", ["'env.tools'", "'bm25'", "missing", "corpus"]),
    ("env.tools={search: {kind: serch}}", ["'env.tools'", "unknown kind 'serch'"]),
    ("env.limits={serch: {timeout_s: 5}}", ["'env.limits'", "'serch'", "search"]),
    ("env.limits={search: {timeout: 5}}", ["'env.limits'", "'timeout'", "timeout_s"]),
    ("env.limits={search: {timeout_s: -1}}", ["'env.limits'", "timeout_s > 0"]),
    ("env.limits={search: {cache: maybe}}", ["'env.limits'", "bool"]),
    ("reward.judge={backend: openai, base_url: 'http://judge:8000/v1'}", ["'reward.judge'", "model"]),
    ("reward.judge={backend: opneai}", ["'reward.judge'", "'opneai'", "'openai'"]),
    ("reward.judge={backend: engine, model_path: /m, base_url: 'http://x'}", ["'reward.judge'", "base_url"]),
    ("reward.fns={format: {style: websailr}}", ["'reward.fns'", "websailr", "websailor"]),
    ("reward.fns={format: {}, judge: {kind: gaia}}", ["'reward.fns'", "needs a judge"]),
    ("reward.fns={format: {}, exact_match: {}, f1: {}}", ["'reward.fns'", "both produce the part 'answer'"]),
    ("agent.hooks=no_such_module:hooks", ["'agent.hooks'", "no_such_module"]),
    ("agent.hooks=rollout.agent:FORCED_ANSWER", ["'agent.hooks'", "not a function"]),
    ("model.path=tiny_v1", ["'model.path'", "tiny_v1", "org/name"]),
    ("model.path=/no/such/model", ["'model.path'", "/no/such/model"]),
    ("model.tiny.hidden_size=wide", ["'model.tiny'", "hidden_size", "int"]),
    ("reward.correct_part=answr", ["'reward.correct_part'", "answer", "format"]),
    ("algo.filter_metric=answr", ["'algo.filter_metric'", "answer"]),
])
def test_dict_sections_fail_at_load(override, expect):
    """Dict-typed and external settings are checked by their builders' dry runs in load_config, before Ray."""
    with pytest.raises(ConfigError) as err:
        load_config(WEBSAILOR, [override])
    for fragment in expect:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_data_path_is_read_at_load(tmp_path):
    ok = qa_file(tmp_path)
    assert load_config(WEBSAILOR, ["data.task=file", f"data.path={ok}"]).data.path == str(ok)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"uid": "a", "question": "q", "answer": "x"}\n{"uid": "b", "question": "q2"}\n')
    with pytest.raises(ConfigError, match=r"'data.path'.*bad.jsonl: (row|line) 2.*answer"):
        load_config(WEBSAILOR, ["data.task=file", f"data.path={bad}"])
    with pytest.raises(ConfigError, match=r"'data.path'.*does not exist"):
        load_config(WEBSAILOR, ["data.task=file", f"data.path={tmp_path / 'missing.jsonl'}"])


def test_yaml_aliases_cannot_blow_up_the_config(tmp_path):
    """Billion laughs: 9 levels of 9 aliases (387 M strings once expanded) inside a tool's settings. Loaded as
    it was (the YAML loader shares aliased nodes), every later walk of the config would expand it: writing
    config.json, sending the tools to the env actors."""
    lines = ['lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("env:\n  tools:\n    search: {top_k: 1}\n    visit:\n" + "".join(f"      {x}\n" for x in lines))
    t0 = time.time()
    with pytest.raises(ConfigError, match=r"laughs.yaml.*aliases expand it to \d+ nodes; a config has at most"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"command-line override.*aliases expand"):
        load_config(WEBSAILOR, ["env.tools.visit={" + ", ".join(lines) + "}"])
    assert time.time() - t0 < 5


def test_yaml_size_and_encoding_name_the_file(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("run:\n  steps: 3\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"big.yaml.*bytes; a config is at most 1048576"):
        load_config(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("run:\n  name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml.*not UTF-8.*0xe9.*line 2"):
        load_config(latin)
    twice = tmp_path / "twice.yaml"
    twice.write_text("trainer:\n  lr: 1.0e-3\nrun:\n  steps: 3\ntrainer:\n  num_ranks: 1\n")
    with pytest.raises(ConfigError, match=r"twice.yaml.*'trainer' appears twice.*lines 1 and 5"):
        load_config(twice)


def test_cli_exits_2_on_a_bad_file_without_a_traceback(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("run:\n  name: caf\u00e9\n".encode("latin-1"))
    proc = subprocess.run([sys.executable, str(ROOT / "launch/websailor.py"), "--config", str(latin),
                           f"run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "configuration error" in proc.stderr and "not UTF-8" in proc.stderr and str(latin) in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, overrides, expect", [
    (SPINE, ["env.tools={search: {}}"], ["'env.tools.search'", "target_token", "without tools"]),
    (SPINE, ["agent.max_turns=3"], ["'agent.max_turns'", "target_token"]),
    (SPINE, ["sft.epochs=3"], ["'sft.epochs'", "target_token"]),
    (SPINE, ["pipeline.stages=[rl]"], ["'pipeline.stages'", "target_token"]),
    (WEBSAILOR, ["reward.composition=vrag"], ["'reward.composition'", "reward.fns"]),
    (WEBSAILOR, ["pipeline.stages=[eval_base,rl,eval_rl]", "sft.epochs=3"], ["'sft.epochs'", "expert, sft"]),
    (WEBSAILOR, ["pipeline.stages=[expert,sft,rl]", "eval.k=4"], ["'eval.k'", "eval_<name>"]),
    (WEBSAILOR, ["data.target_token=the"], ["'data.target_token'", "world_qa"]),
    (WEBSAILOR, ["rollout.max_staleness=2"], ["'rollout.max_staleness'", "rollout.mode=sync"]),
    (WEBSAILOR, ["trainer.lora_alpha=32"], ["'trainer.lora_alpha'", "lora_rank=0"]),
    (SPINE, ["reward.judge={backend: openai, base_url: 'http://j/v1', model: j}"], ["'reward.judge", "asks a judge"]),
    (WEBSAILOR, ["reward.fns={format: {style: websailor}, f1: {}}", "reward.composition=websailor",
                 "reward.judge={backend: openai, base_url: 'http://j/v1', model: j}"],
     ["'reward.judge", "asks a judge"]),
])
def test_a_setting_nothing_reads_is_an_error(config, overrides, expect):
    with pytest.raises(ConfigError) as err:
        load_config(config, overrides)
    for fragment in expect + ["read by nothing", "command line"]:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_a_file_setting_made_moot_by_the_command_line_is_not_an_error():
    """model.path=<a real model> on the command line makes the file's model.tiny moot, not wrong."""
    cfg = load_config(WEBSAILOR, ["model.path=Qwen/Qwen2.5-7B-Instruct", "pipeline.stages=[eval_base,rl,eval_rl]"])
    assert cfg.model.path == "Qwen/Qwen2.5-7B-Instruct" and cfg.model.tiny  # kept, unread
    with pytest.raises(ConfigError, match="'model.tiny.hidden_size' \\(from the command line\\)"):
        load_config(WEBSAILOR, ["model.path=Qwen/Qwen2.5-7B-Instruct", "model.tiny.hidden_size=64"])


def test_reward_judge_alone_judges_the_answer(tmp_path):
    """reward.judge without reward.fns: the task's default rewards and composition, with that judge."""
    from rl.tasks import DEFAULT_QA_SCORING, load_tasks

    judge = {"backend": "openai", "base_url": "http://judge:8000/v1", "model": "judge"}
    cfg = load_config(WEBSAILOR, ["data.task=file", f"data.path={qa_file(tmp_path)}",
                                  "reward.judge=" + json.dumps(judge)])
    tasks, scoring = load_tasks(cfg, tokenizer=None)
    assert len(tasks) == 4
    assert scoring == {"rewards": DEFAULT_QA_SCORING["rewards"], "composition": "websailor", "judge": judge}
    tasks, scoring = load_tasks(load_config(WEBSAILOR, ["data.task=file", f"data.path={qa_file(tmp_path)}"]), None)
    assert scoring["judge"] == {"backend": "rule"}
