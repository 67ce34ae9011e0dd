"""Bad configurations, class by class: every one is a ConfigError naming the key or the file (never another
exception, never a config that loads), in well under a second, and the command line turns each into exit code 2
with one message. Good variants next to them still load (no false alarm).

Classes: the YAML file itself (size, encoding, aliases, nesting, duplicate or non-string keys, tags, syntax);
command-line overrides; the dict-typed sections checked by their builders' dry runs (env.tools, env.limits,
reward.fns / composition / judge, agent.hooks, model.path / tiny, data.path, the reward parts named elsewhere);
settings nothing in the run would read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from launch.common import ROOT, main
from rl.config import ConfigError, load_config

WEBSAILOR = ROOT / "launch/configs/websailor.yaml"
SPINE = ROOT / "launch/configs/spine.yaml"
MASKSEARCH = ROOT / "launch/configs/masksearch.yaml"

LOL = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + \
    [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
LOL_MAPS = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}"] + \
    [f"m{i}: &m{i} {{{', '.join(f'{k}: *m{i - 1}' for k in 'abcdefghi')}}}" for i in range(1, 10)]


def tool_settings(lines: list[str]) -> str:
    return "env:\n  tools:\n    search: {top_k: 1}\n    visit:\n" + "".join(f"      {x}\n" for x in lines)


#: (name, file bytes, a fragment the message must hold besides the file name)
BAD_FILES = [
    ("too_big", b"run:\n  steps: 3\n" + b"# pad\n" * 200_000, "at most 1048576 bytes"),
    ("latin1", "run:\n  name: caf\u00e9\n".encode("latin-1"), "not UTF-8"),
    ("utf16", "run:\n  steps: 3\n".encode("utf-16"), "not UTF-8"),
    ("binary", bytes(range(256)) * 4, "not UTF-8"),
    ("nul", b"run:\n  steps: 3\x00\n", "not valid YAML"),
    ("laughs_lists", tool_settings(LOL).encode(), "aliases expand"),
    ("laughs_maps", tool_settings(LOL_MAPS).encode(), "aliases expand"),
    ("laughs_top", ("\n".join(LOL) + "\nrun: {name: *l9}\n").encode(), "aliases expand"),
    ("alias_chain", "".join(f"k{i}: &k{i} [{'*k%d' % (i - 1) if i else 1}]\n" for i in range(60)).encode(),
     "deeper than 32"),
    ("recursive_alias", b"run: &r {name: [*r]}\n", "recursive alias"),
    ("nested_40", b"run: " + b"[" * 40 + b"]" * 40 + b"\n", "deeper than 32"),
    ("nested_20k", b"run: " + b"[" * 20_000 + b"]" * 20_000 + b"\n", "nest"),
    ("duplicate_section", b"trainer:\n  lr: 1.0e-3\nrun:\n  steps: 3\ntrainer:\n  num_ranks: 1\n", "appears twice"),
    ("duplicate_key", b"trainer:\n  lr: 1.0e-3\n  lr: 2.0e-3\n", "appears twice"),
    ("int_key", b"1: 2\n", "not a string"),
    ("bool_key", b"run:\n  yes: 3\n", "not a string"),
    ("null_key", b"~: 3\n", "not a string"),
    ("complex_key", b"? [a, b]\n: 3\n", "not a string"),
    ("python_tag", b"run: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
    ("unknown_tag", b"run: !secret {name: x}\n", "not valid YAML"),
    ("two_documents", b"run: {steps: 1}\n---\nrun: {steps: 2}\n", "not valid YAML"),
    ("tab_indent", b"run:\n\tsteps: 3\n", "not valid YAML"),
    ("unclosed", b"run: {steps: 1\n", "not valid YAML"),
    ("scalar_root", b"42\n", "mapping of sections"),
    ("list_root", b"- run\n- trainer\n", "mapping of sections"),
    ("null_section", b"run:\ntrainer: 3\n", "'run'"),
    ("bad_anchor", b"run: *nowhere\n", "not valid YAML"),
]


@pytest.mark.parametrize("name, data, fragment", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_yaml_files(tmp_path, name, data, fragment):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(data)
    t0 = time.time()
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert time.time() - t0 < 5
    assert fragment in str(err.value), str(err.value)
    assert f"{name}.yaml" in str(err.value), str(err.value)


def test_not_a_file(tmp_path):
    for path, fragment in ((tmp_path, "not a regular file"), (tmp_path / "missing.yaml", "does not exist"),
                           (Path("/dev/null"), "not a regular file")):
        with pytest.raises(ConfigError, match=fragment):
            load_config(path)


#: command-line overrides (key.path=value) that are wrong in themselves
BAD_OVERRIDES = [
    ("run.steps", "key.path=value"),
    ("run..steps=3", "dotted key path"),
    ("1run.steps=3", "dotted key path"),
    ("run.steps=[1", "not valid YAML"),
    ("run.name=!!python/name:os.system", "not valid YAML"),
    ("env.tools.visit={" + ", ".join(LOL) + "}", "aliases expand"),
    ("env.tools.visit={" + ", ".join(LOL_MAPS) + "}", "aliases expand"),
    ("run.name=" + "[" * 50 + "]" * 50, "deeper than 32"),
    ("reward.fns={1: {}}", "not a string"),
    ("algo=3", "'algo'"),
    ("algo.preset=[1]", "'algo.preset'"),
    ("trainer.lr=abc", "'trainer.lr'"),
    ("trainer.lr=.inf", "not a finite number"),
    ("trainer.weight_decay=.inf", "not a finite number"),
    ("trainer.betas=[0.9, 1.0]", "'trainer.betas'"),  # AdamW's betas lie in [0, 1)
    ("ray.num_cpus=0", "'ray.num_cpus'"),  # 0 meant "the machine's", silently
    ("pipeline.stages=[]", "'pipeline.stages'"),  # started every actor group and ran nothing
    ("run.stage_timeout_s=.inf", "not a finite number"),
    ("nosection.x=1", "unknown key 'nosection'"),
]


@pytest.mark.parametrize("override, fragment", BAD_OVERRIDES, ids=range(len(BAD_OVERRIDES)))
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(WEBSAILOR, [override])
    assert fragment in str(err.value), str(err.value)


def _hooks_module(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "h4_hooks_boom.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "h4_hooks_fine.py").write_text("from rollout.agent import EpisodeHooks\n"
                                               "def hooks():\n    return EpisodeHooks()\nNOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))


#: (overrides on websailor.yaml, the key the message must name, another fragment)
BAD_SECTIONS = [
    # env.tools: envs.registry.validate_tools
    (["env.tools={search: {kind: serch}}"], "env.tools", "unknown kind"),
    (["env.tools={search: {kind: 3}}"], "env.tools", "kind must be a string"),
    (["env.tools={search: [1, 2]}"], "env.tools.search", "object"),
    (["env.tools.search.topk=3"], "env.tools", "'topk'"),
    (["env.tools.search.top_k=many"], "env.tools", "'top_k'"),
    (["env.tools.search.top_k=true"], "env.tools", "'top_k'"),
    (["env.tools.search.backend=bm26"], "env.tools", "bm26"),
    (["env.tools.search.backend=true"], "env.tools", "SearchBackend object"),
    (["env.tools={search: {backend: bm25}}"], "env.tools", "corpus"),
    (["env.tools={search: {backend: bm25, corpus: c.jsonl, k1: 2}}"], "env.tools", "'k1'"),
    (["env.tools={search: {backend: serper, api_key: x}}"], "env.tools", "'api_key'"),
    (["env.tools.visit.max_urls=2.5"], "env.tools", "'max_urls'"),
    (["env.tools.visit.allow_hosts=example.com"], "env.tools", "'allow_hosts'"),
    (["env.tools.visit.summary=fast"], "env.tools", "'summary'"),
    # ... and inside it: keys, types and values, as make_summarizer would check them (its API key is not read)
    (["env.tools.visit.summary={base_url: 'http://s/v1', model: m, tmeout_s: 5}"], "env.tools", "'tmeout_s'"),
    (["env.tools.visit.summary={base_url: 'http://s/v1'}"], "env.tools", "missing ['model']"),
    (["env.tools.visit.summary={base_url: 'http://s/v1', model: m, timeout_s: soon}"], "env.tools", "'timeout_s'"),
    (["env.tools.visit.summary={base_url: 's:8000', model: m}"], "env.tools", "base_url must be an http(s) URL"),
    (["env.tools.visit.summary={base_url: 'http://s/v1', model: m, shrink: 2}"], "env.tools", "0 < shrink < 1"),
    (["env.tools.visit.summary={base_url: 'http://s/v1', model: m, api_key_env: 3}"], "env.tools", "'api_key_env'"),
    (["env.tools={python: {memory: 512}}"], "env.tools", "'memory'"),
    (["env.tools={python: {timeout_s: soon}}"], "env.tools", "'timeout_s'"),
    (["env.tools={crop: {pad: wide}}"], "env.tools", "'pad'"),
    # env.limits: envs.server.check_limits
    (["env.limits={serch: {timeout_s: 5}}"], "env.limits", "serch"),
    (["env.limits={search: {timeout: 5}}"], "env.limits", "'timeout'"),
    (["env.limits={search: {timeout_s: -1}}"], "env.limits", "timeout_s > 0"),
    (["env.limits={search: {concurrency: 0}}"], "env.limits", "concurrency >= 1"),
    (["env.limits={search: {rate_per_s: 0}}"], "env.limits", "rate_per_s"),
    (["env.limits={search: {cache: maybe}}"], "env.limits", "bool"),
    (["env.limits={search: {retries: 1.5}}"], "env.limits", "int"),
    (["env.limits={search: 5}"], "env.limits.search", "object"),
    # reward.fns, reward.composition: the RewardWorker's construction
    (["reward.fns={}"], "reward.fns", "at least one"),
    (["reward.fns={scor: {}}", "reward.judge={backend: rule}"], "reward.fns", "unknown reward 'scor'"),
    (["reward.fns={format: {style: websailr}}"], "reward.fns", "websailr"),
    (["reward.fns={format: {strict: true}}"], "reward.fns", "strict"),
    # an option of the wrong type, said at load (it failed, or scored wrongly, mid-run)
    (["reward.fns={format: {style: 3}}"], "reward.fns", "reward 'format': bad value for 'style'"),
    (["reward.fns={format: {min_tool_calls: two}, f1: {}}"], "reward.fns", "bad value for 'min_tool_calls'"),
    (["reward.fns={format: {}, f1: {part: [answer]}}"], "reward.fns", "reward 'f1': bad value for 'part'"),
    (["reward.fns={format: {}, judge: {kind: gaia}}"], "reward.fns", "needs a judge"),
    (["reward.fns={format: {}, judge: {kind: gaiaa}}", "reward.judge={backend: rule}"], "reward.fns", "gaiaa"),
    (["reward.fns={format: {}, exact_match: {}, f1: {}}"], "reward.fns", "both produce the part"),
    (["reward.fns={format: {}, f1: {bonus: 1}}"], "reward.fns", "bonus"),
    (["reward.fns={format: {}, anls: {threshold: high}}"], "reward.fns", "reward.fns"),
    (["reward.fns={format: {}, f1: {}}", "reward.composition=websailr"], "reward.composition", "websailr"),
    (["reward.fns={format: {}, f1: {}}", "reward.composition={terms: []}"], "reward.composition", "terms"),
    (["reward.fns={format: {}, f1: {}}", "reward.composition={terms: [{name: answer, weight: .nan}]}"],
     "reward.composition", "finite"),
    (["reward.fns={format: {}, f1: {}}", "reward.composition={terms: [{name: answer, weight: 1}], gat: format}"],
     "reward.composition", "gat"),
    (["reward.fns={format: {}, f1: {}}", "reward.composition=vrag"], "reward.fns", "ndcg"),
    # reward.judge: built (rule, openai) or bound to its signature (engine); nothing starts
    (["reward.judge={backend: opneai}"], "reward.judge", "'opneai'"),
    (["reward.judge={model: judge}"], "reward.judge", "None"),
    (["reward.judge={backend: openai, base_url: 'http://judge:8000/v1'}"], "reward.judge", "model"),
    (["reward.judge={backend: openai, base_url: judge:8000, model: j}"], "reward.judge", "http"),
    (["reward.judge={backend: openai, base_url: 'http://j/v1', model: j, timeout: 3}"], "reward.judge", "timeout"),
    (["reward.judge={backend: openai, base_url: 'http://j/v1', model: j, max_retries: -1}"], "reward.judge",
     "max_retries"),
    (["reward.judge={backend: rule, metric: bleu}"], "reward.judge", "bleu"),
    (["reward.judge={backend: engine}"], "reward.judge", "model_path"),
    (["reward.judge={backend: engine, model_path: /m, base_url: 'http://x'}"], "reward.judge", "base_url"),
    (["reward.judge={backend: engine, model_path: /m, timeout_s: 0}"], "reward.judge", "timeout_s"),
    # agent.hooks: imported and checked callable, not called
    (["agent.hooks=no_colon"], "agent.hooks", "module:function"),
    (["agent.hooks=no_such_module:hooks"], "agent.hooks", "no_such_module"),
    (["agent.hooks=h4_hooks_fine:nothing"], "agent.hooks", "nothing"),
    (["agent.hooks=h4_hooks_fine:NOT_CALLABLE"], "agent.hooks", "not a function"),
    (["agent.hooks=h4_hooks_boom:hooks"], "agent.hooks", "boom at import"),
    # model: the tiny builder's signature; a real model's path
    (["model.tiny.hidden=3"], "model.tiny", "'hidden'"),
    (["model.tiny.hidden_size=wide"], "model.tiny", "'hidden_size'"),
    (["model.tiny.num_layers=2.5"], "model.tiny", "'num_layers'"),
    (["model.path=tiny_vl", "model.tiny.head_dim=16", "model.tokenizer=local"], "model.tiny", "'head_dim'"),
    (["model.path=tiny_vl", "model.tiny={}"], "model.tiny", "tokenizer='world'"),
    (["model.path=tiny_v1"], "model.path", "org/name"),
    (["model.path=/no/such/model"], "model.path", "/no/such/model"),
    (["model.path=../models/qwen"], "model.path", "../models/qwen"),
    (["model.path=Qwen--Qwen2.5/7B"], "model.path", "org/name"),
    (["model.path={folder}"], "model.path", "no config.json"),
    # data.path: read as the run will read it
    (["data.task=file", "data.path={folder}/missing.jsonl"], "data.path", "does not exist"),
    (["data.task=file", "data.path={folder}/bad_json.jsonl"], "data.path", "not valid JSON"),
    (["data.task=file", "data.path={folder}/no_answer.jsonl"], "data.path", "answer"),
    (["data.task=file", "data.path={folder}/repeat_uid.jsonl"], "data.path", "uid"),
    (["data.task=file", "data.path={folder}/empty.jsonl"], "data.path", "no tasks"),
    (["data.task=file", "data.path={folder}/latin1.jsonl"], "data.path", "UTF-8"),
    (["data.task=file", "data.path={folder}/bad_corpus.jsonl"], "data.path", "title"),
    (["data.task=file", "data.path={folder}"], "data.path", "data.path"),
    # a reward part named elsewhere must be one the rewards produce
    (["reward.correct_part=answr"], "reward.correct_part", "answer"),
    (["algo.filter_metric=answr"], "algo.filter_metric", "answer"),
    (["reward.fns={format: {}, f1: {part: f1}}"], "reward.correct_part", "f1"),
    # the embedding servers: a reference must name a served model; the served specs are checked before loading
    (["env.tools={search: {backend: dense, corpus: c.jsonl, embedder: {kind: server, model: mini}}, visit: {}}"],
     "env.tools.search.embedder", "'mini' is not served"),
    (["env.tools={search: {backend: dense, corpus: c.jsonl, embedder: {kind: server, model: mini}}, visit: {}}",
      "embedding.models={minii: minilm}"], "env.tools.search.embedder", "'mini' is not served"),
    (["env.tools={search: {backend: bm25, corpus: c.jsonl, rerank: {top_n: 5, server: rr}}, visit: {}}"],
     "env.tools.search.rerank.server", "'rr' is not served"),
    (["env.tools={search: {backend: dense, corpus: c.jsonl, embedder: {kind: minilm, dims: 3}}, visit: {}}"],
     "env.tools.search.embedder", "dims"),
    (["env.tools={search: {backend: dense, corpus: c.jsonl, embedder: {kind: server, model: m}}, visit: {}}",
      "embedding.models={m: {kind: bogus}}"], "embedding.models.m", "bogus"),
    (["env.tools={search: {backend: dense, corpus: c.jsonl, embedder: {kind: server, model: m}}, visit: {}}",
      "embedding.models={m: {kind: server, model: m}}"], "embedding.models.m", "cannot serve itself"),
    (["env.tools={search: {backend: bm25, corpus: c.jsonl, rerank: {server: r}}, visit: {}}",
      "embedding.rerankers={r: {max_length: 64}}"], "embedding.rerankers.r", "path"),
    (["memory.enabled=true", "memory.embedder={kind: server, model: m}"], "memory.embedder", "'m' is not served"),
    (["env.tools={search: {backend: wiki, embedder: {kind: server, model: m}}, visit: {}}",
      "embedding.models={m: minilm}"], "env.tools", "only with retriever: dense"),
    (["env.tools={search: {backend: bm25, corpus: c.jsonl, rerank: {server: r, timeout_s: 0}}, visit: {}}",
      "embedding.rerankers={r: {path: /models/reranker}}"], "env.tools", "timeout_s"),
    (["env.tools={search: {backend: dense, corpus: c.jsonl, embedder: {kind: server, model: m, timeout_s: -1}}, "
      "visit: {}}", "embedding.models={m: minilm}"], "env.tools.search.embedder", "timeout_s"),
]


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """Files the cases name ({folder}) and the hook modules they import."""
    _hooks_module(tmp_path, monkeypatch)
    rows = {"bad_json": '{"uid": "a", "question": "q", "answer": "x"}\n{"uid": "b", "question": \n',
            "no_answer": '{"uid": "a", "question": "q", "answer": "x"}\n{"uid": "b", "question": "q2"}\n',
            "repeat_uid": '{"uid": "a", "question": "q", "answer": "x"}\n'
                          '{"uid": "a", "question": "q", "answer": "y"}\n',
            "empty": "\n", "bad_corpus": '{"title": "T", "text": "some text"}\n{"title": "", "text": "x"}\n'}
    for name, text in rows.items():
        (tmp_path / f"{name}.jsonl").write_text(text)
    (tmp_path / "latin1.jsonl").write_bytes('{"uid": "a", "question": "caf\u00e9", "answer": "x"}\n'.encode("latin-1"))
    return tmp_path


@pytest.mark.parametrize("overrides, key, fragment", BAD_SECTIONS, ids=range(len(BAD_SECTIONS)))
def test_bad_dict_sections(inputs, overrides, key, fragment):
    overrides = [o.replace("{folder}", str(inputs)) for o in overrides]
    t0 = time.time()
    with pytest.raises(ConfigError) as err:
        load_config(WEBSAILOR, overrides)
    assert time.time() - t0 < 5
    message = str(err.value)
    assert f"'{key}'" in message and fragment in message, message


#: (config, overrides): settings nothing in the run would read
UNREAD = [
    (SPINE, ["env.tools={search: {}}"]),
    (SPINE, ["env.world_size=small"]),
    (SPINE, ["env.limits={search: {timeout_s: 5}}"]),
    (SPINE, ["agent.max_turns=3"]),
    (SPINE, ["agent.hooks=h4_hooks_fine:hooks"]),
    (SPINE, ["pipeline.stages=[rl]"]),
    (SPINE, ["sft.epochs=3"]),
    (SPINE, ["eval.k=5"]),
    (SPINE, ["reward.correct_part=answer"]),
    (SPINE, ["data.path=tasks.jsonl"]),
    (SPINE, ["data.qa_nodes=[2, 3]"]),
    (SPINE, ["reward.judge={backend: openai, base_url: 'http://j/v1', model: j}"]),
    (SPINE, ["reward.judge={backend: rule, metric: f1}"]),
    (WEBSAILOR, ["reward.composition=vrag"]),
    (WEBSAILOR, ["reward.composition={terms: [{name: answer, weight: 1}]}"]),
    (WEBSAILOR, ["data.target_token=the"]),
    (WEBSAILOR, ["pipeline.stages=[eval_base,rl,eval_rl]", "sft.lr=1e-5"]),
    (WEBSAILOR, ["rollout.max_staleness=2"]),
    (WEBSAILOR, ["rollout.partial_rollout=abort"]),
    (WEBSAILOR, ["rollout.backend=hf", "rollout.dtype=bfloat16"]),
    (WEBSAILOR, ["trainer.lora_alpha=32"]),
    (WEBSAILOR, ["rollout.backend=hf", "rollout.kv_cache_gib=4"]),
    (WEBSAILOR, ["algo.prefilter=false", "algo.prefilter_rollouts=4"]),
    (WEBSAILOR, ["algo.overlong_cache_len=100"]),  # DUPO: no overlong punishment
    (WEBSAILOR, ["algo.max_gen_rounds=2"]),  # DUPO duplicates, only DAPO generates again
    (WEBSAILOR, ["algo.kl_estimator=k1"]),  # no KL term
    (WEBSAILOR, ["sft.lr_schedule=constant", "sft.min_lr_ratio=0.2"]),
    (WEBSAILOR, ["trainer.lora_target_modules=[q_proj]"]),
    (WEBSAILOR, ["model.path=Qwen/Qwen2.5-7B-Instruct", "model.tokenizer=qwen3"]),
    (WEBSAILOR, ["model.path=Qwen/Qwen2.5-7B-Instruct", "model.tiny.num_layers=2"]),
    (MASKSEARCH, ["reward.judge={backend: openai, base_url: 'http://j/v1', model: j}"]),
    (WEBSAILOR, ["embedding.models={m: minilm}"]),  # served, but nothing reaches the server
    (WEBSAILOR, ["embedding.num_cpus=2"]),
    (SPINE, ["embedding.models={m: minilm}"]),
    (SPINE, ["embedding.max_batch=8"]),
    (WEBSAILOR, ["env.tools={search: {backend: dense, corpus: c.jsonl, embedder: {kind: server, model: m}}, visit: {}}",
                 "embedding.models={m: minilm, unused: hashing}"]),
    # no stage trains with RL: its settings are read by nothing (the expert is scripted, SFT uses sft.lr,
    # evaluations sample eval.k at eval.temperature)
    *[(WEBSAILOR, ["pipeline.stages=[expert,eval_base,sft,eval_sft]", o])
      for o in ("algo.kl_coef=0.1", "algo.preset=dapo", "run.steps=3", "trainer.lr=1e-3", "rollout.n=2",
                "rollout.temperature=0.8", "rollout.seed=3", "data.batch_size=2")],
    (MASKSEARCH, ["pipeline.stages=[eval_base]", "algo.clip_high=0.28"]),
]


@pytest.mark.parametrize("config, overrides", UNREAD, ids=range(len(UNREAD)))
def test_settings_nothing_reads(inputs, config, overrides):
    with pytest.raises(ConfigError) as err:
        load_config(config, overrides)
    assert "read by nothing" in str(err.value) and "(from the command line)" in str(err.value), str(err.value)


def test_unread_settings_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("env:\n  tools: {search: {}}\nrun:\n  steps: 3\n")  # target_token by default: no tools
    with pytest.raises(ConfigError, match=r"'env.tools.search' \(from the config file .*mine.yaml\) would be read"):
        load_config(path)
    path.write_text("data:\n  task: world_qa\nreward:\n  composition: vrag\n")
    with pytest.raises(ConfigError, match=r"'reward.composition' \(from the config file .*mine.yaml\)"):
        load_config(path)


#: good variants: each must load (no false alarm)
GOOD = [
    (WEBSAILOR, []),
    (WEBSAILOR, ["model.path=Qwen/Qwen2.5-7B-Instruct"]),  # the file's tiny settings become moot, not wrong
    (WEBSAILOR, ["pipeline.stages=[eval_base,rl,eval_rl]"]),  # the file's sft settings become moot
    # the split sets the held-out questions apart whatever the stages: fewer of them, more rows for RL
    (WEBSAILOR, ["pipeline.stages=[expert,sft,rl]", "eval.num_tasks=8"]),
    # ... and the expert's questions too (the split of the synthesized questions), whatever the stages
    (WEBSAILOR, ["pipeline.stages=[eval_base,rl,eval_rl]", "sft.expert_tasks=16"]),
    # RL settings with a stage that trains: MaskSearch's curriculum stages train with RL
    (MASKSEARCH, ["pipeline.stages=[rl_k2]", "algo.clip_high=0.28", "run.steps=2"]),
    (WEBSAILOR, ["reward.judge={backend: openai, base_url: 'http://judge:8000/v1', model: judge, timeout_s: 30}"]),
    (WEBSAILOR, ["reward.judge={backend: engine, model_path: /models/judge, engine: hf, max_tokens: 8}"]),
    (WEBSAILOR, ["reward.fns={format: {style: websailor}, f1: {}}", "reward.composition=websailor"]),
    (WEBSAILOR, ["env.tools={search: {backend: bm25, corpus: c.jsonl, top_k: 3}, visit: {max_urls: 2}}",
                 "env.limits={search: {timeout_s: 5, cache: false}, visit: {concurrency: 4}}"]),
    (WEBSAILOR, ["agent.hooks=h4_hooks_fine:hooks"]),
    # a summary model whose key variable is set only where the run runs: not read at load
    (WEBSAILOR, ["env.tools.visit.summary={base_url: 'http://s/v1', model: m, api_key_env: WINDWARD_UNSET_KEY, "
                 "timeout_s: 30, shrink: 0.5, cache_size: 100}"]),
    (WEBSAILOR, ["data.task=file", "data.path={folder}/tasks.jsonl"]),
    (MASKSEARCH, ["data.task=file", "data.path={folder}/corpus.jsonl",
                  "env.tools={search: {backend: bm25, corpus: corpus.jsonl}}"]),
    (MASKSEARCH, ["reward.fns={format: {style: websailor, min_tool_calls: 0}, span_judge: {}}"]),
    (SPINE, ["rollout.mode=async", "rollout.max_staleness=2"]),
    (WEBSAILOR, ["algo.preset=dapo", "algo.max_gen_rounds=2"]),
    (WEBSAILOR, ["algo.kl_coef=0.1", "algo.kl_estimator=k1"]),
    (WEBSAILOR, ["algo.overlong_penalty=true", "algo.overlong_max_len=4096", "algo.overlong_cache_len=512"]),
    (SPINE, ["trainer.lora_rank=8", "trainer.lora_alpha=16"]),
    (SPINE, ["reward.fns={target_token: {token_id: 5}}"]),
    (ROOT / "launch/configs/vrag.yaml", ["model.tiny={hidden_size: 64, vision_depth: 1}"]),
    (WEBSAILOR, ["env.tools={search: {backend: dense, corpus: c.jsonl, embedder: {kind: server, model: m},"
                 " rerank: {top_n: 5, server: r}}, visit: {}}", "embedding.models={m: minilm}",
                 "embedding.rerankers={r: {path: /models/reranker}}", "memory.enabled=true",
                 "memory.embedder={kind: server, model: m}", "embedding.num_cpus=0.5"]),
    (ROOT / "launch/configs/vrag.yaml", ["env.tools.image_search.embedder={kind: server, model: m}",
                                         "embedding.models={m: hashing}"]),
    (ROOT / "launch/configs/vrag.yaml", ["env.tools.image_search.embedder=null"]),
]


@pytest.mark.parametrize("config, overrides", GOOD, ids=range(len(GOOD)))
def test_good_variants_load(inputs, config, overrides):
    (inputs / "tasks.jsonl").write_text("".join(json.dumps({"uid": f"q{i}", "question": "q?", "answer": "ann"}) + "\n"
                                                for i in range(3)))
    (inputs / "corpus.jsonl").write_text(json.dumps({"title": "T", "text": "One. Two. Three."}) + "\n")
    load_config(config, [o.replace("{folder}", str(inputs)) for o in overrides])


def test_the_command_line_exits_2_with_one_message(inputs, tmp_path, capsys):
    """A sample of every class through the recipe's main(): exit code 2, one line on stderr, nothing started."""
    bad = tmp_path / "laughs.yaml"
    bad.write_text(tool_settings(LOL))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("run:\n  name: caf\u00e9\n".encode("latin-1"))
    argvs = [["--config", str(bad)], ["--config", str(latin)], ["env.tools.search.topk=3"],
             ["reward.judge={backend: opneai}"], ["agent.hooks=h4_hooks_boom:hooks"],
             [f"data.task=file", f"data.path={inputs}/no_answer.jsonl", "pipeline.stages=[rl]"],
             ["--config", str(SPINE), "sft.epochs=3"], ["--smoke", "--config", str(SPINE), "env.tools={search: {}}"]]
    for argv in argvs:
        code = main("websailor", WEBSAILOR, argv + [f"run.dir={tmp_path / 'run'}"])
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.startswith("configuration error: ") and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "run").exists()
