"""The config's `embedding` section through real actor groups (slow): RLGroups starts one embedding server per node
before the EnvGroup and the memory; the dense search backend of every EnvServer and the memory reach it by
`{kind: server, model: m}` instead of each loading the model; shutdown ends it. Simulated engines and trainer
(launch/configs/sim_cluster.yaml) keep it to seconds."""

from __future__ import annotations

import json

import pytest
import ray

from envs.embedding.server import server_name
from launch.common import ROOT
from rl.config import load_config
from rl.controller import train
from rl.groups import RLGroups

pytestmark = pytest.mark.slow


def test_groups_share_the_node_embedding_server(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"title": f"Page {i}", "text": f"fact {i} about topic {i % 7}."}) + "\n"
                              for i in range(40)))
    server = "{kind: server, model: m}"
    cfg = load_config(ROOT / "launch/configs/sim_cluster.yaml", [
        "run.steps=2", "data.batch_size=2", "rollout.n=2", "rollout.num_engines=2", "data.num_tasks=8",
        "rollout.sim={time_scale: 0.01, engines_per_actor: 2, tool_calls: 2, tokens_per_turn: 16}",
        "trainer.sim={gpus: 0.1}", "run.stage_timeout_s=120",
        f"env.tools={{search: {{backend: dense, corpus: '{corpus}', top_k: 2, embedder: {server}}}}}",
        "env.num_servers=2", "memory.enabled=true", f"memory.embedder={server}", "memory.mode=online",
        "embedding.models={m: hashing}", "embedding.num_cpus=0.01"])
    try:
        groups = RLGroups(cfg)
        try:
            handles = groups.embedding
            assert len(handles) == len([n for n in ray.nodes() if n["Alive"]]) == 1
            before = ray.get(handles[0].info.remote(), timeout=60)
            # both EnvServers embedded the corpus through it (documents), none loaded a model of its own
            assert before["texts"] >= 2 * 40 and set(before["embedders"]) == {"m"}
            train(cfg, tmp_path / "run", groups=groups)
            after = ray.get(handles[0].info.remote(), timeout=60)
            assert after["requests"] > before["requests"]  # the rollouts' searches and the memory's queries
        finally:
            groups.shutdown()
        with pytest.raises(ValueError):  # shutdown ended it
            ray.get_actor(server_name(ray.get_runtime_context().get_node_id()))
    finally:
        ray.shutdown()
