"""launch/cluster/ and the GPU configs: the cluster-launcher YAML validates against the schema that ships
with Ray, the KubeRay RayJob has what KubeRay needs, and the GPU configs load and build (tools, limits, judge,
rewards) without a GPU or a network."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from rl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "launch/cluster/ray-cluster.yaml"
RAYJOB = ROOT / "launch/cluster/rayjob.yaml"
GPU_7B = ROOT / "launch/configs/websailor_7b_8gpu.yaml"
MULTINODE = ROOT / "launch/configs/websailor_multinode.yaml"
GPU_CONFIGS = [GPU_7B, MULTINODE]


def _schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


# --- the Ray cluster launcher ---------------------------------------------------------------------------


def test_cluster_yaml_validates_against_rays_schema():
    config = yaml.safe_load(CLUSTER.read_text())
    jsonschema.validate(config, _schema())


def test_cluster_yaml_validates_after_rays_own_preparation():
    """What `ray up` does with it: merge the provider's defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(yaml.safe_load(CLUSTER.read_text()))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_schema_check_is_not_vacuous():
    config = yaml.safe_load(CLUSTER.read_text())
    config["head_start_ray_comands"] = ["typo"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _schema())
    config = yaml.safe_load(CLUSTER.read_text())
    config["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "8"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _schema())


def test_cluster_yaml_runs_the_project_on_gpu_workers():
    config = yaml.safe_load(CLUSTER.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    assert any(t["resources"].get("GPU", 0) == 8 and t.get("min_workers", 0) >= 1 for t in workers.values())
    # the working tree is mounted and installed with the gpu extra
    (remote,) = [r for r, local in config["file_mounts"].items() if local == "."]
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # copied, not written here
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
               if "ray start" in c)
    setup = " && ".join(config["setup_commands"])
    assert f"cd {remote}" in setup and 'pip install -e ".[gpu]"' in setup
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])
    for excluded in (".venv", "runs"):
        assert excluded in config["rsync_exclude"]
    assert "launch/configs/websailor_7b_8gpu.yaml" in CLUSTER.read_text()  # the command it documents


# --- the KubeRay RayJob ---------------------------------------------------------------------------------


def test_rayjob_manifest_has_the_expected_fields():
    job = yaml.safe_load(RAYJOB.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "launch/websailor.py", "--config", "launch/configs/websailor_7b_8gpu.yaml"]
    # the entrypoint's overrides are valid for the config it names
    load_config(ROOT / argv[3], argv[4:])
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    group = cluster["workerGroupSpecs"][0]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["image"] == head["image"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == 8
    assert group["replicas"] >= 1 and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # secrets come from a Kubernetes secret, never from the file
    for container in (head, worker):
        assert all("secretRef" in e for e in container.get("envFrom", []))
        assert not [e for e in container.get("env", []) if "value" in e and "KEY" in e["name"]]
    # the run folder the entrypoint names is mounted on every pod
    run_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("run.dir="))
    for pod in (cluster["headGroupSpec"]["template"]["spec"], group["template"]["spec"]):
        mounts = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])]
        assert any(run_dir.startswith(m.rstrip("/") + "/") for m in mounts)


def test_rayjob_pvc_and_dockerfile():
    pvc = yaml.safe_load((ROOT / "launch/cluster/runs-pvc.yaml").read_text())
    job = yaml.safe_load(RAYJOB.read_text())
    claims = {v["persistentVolumeClaim"]["claimName"]
              for v in job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] in claims
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    dockerfile = (ROOT / "launch/cluster/Dockerfile").read_text()
    assert 'pip install --no-cache-dir -e ".[gpu]"' in dockerfile
    assert "WORKDIR " + yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"] in dockerfile


def test_no_secrets_in_cluster_files_or_configs():
    import re

    for path in [CLUSTER, RAYJOB, *GPU_CONFIGS]:
        text = path.read_text()
        assert not re.search(r"(?i)(api_key|token|password|secret)\s*:\s*['\"]?[A-Za-z0-9_\-]{16,}", text), path
        assert not re.search(r"sk-[A-Za-z0-9]{10,}", text), path


# --- the GPU configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.stem)
def test_gpu_config_loads_with_realistic_settings(path):
    cfg = load_config(path, check_inputs=False)  # the multi-node run's data file is on its cluster
    assert cfg.model.path == "Qwen/Qwen2.5-7B-Instruct" and cfg.model.dtype == "bfloat16"
    assert cfg.rollout.backend == "vllm" and cfg.rollout.gpus_per_engine == 1
    assert cfg.trainer.gpus_per_rank == 1 and cfg.trainer.lr == 1e-6
    assert cfg.algo.preset == "dupo" and cfg.algo.sampler == "dupo"
    assert cfg.agent.max_tool_calls == 40 and cfg.agent.max_context_tokens == 31 * 1024 - 500
    assert cfg.rollout.max_model_len >= cfg.agent.max_context_tokens
    assert cfg.trainer.token_budget >= cfg.agent.max_context_tokens
    assert cfg.reward.judge["backend"] == "openai"
    assert cfg.reward.fns is not None, "reward.judge is only used when reward.fns is given (rl/controller.py)"
    assert cfg.data.task in ("world_qa", "file") and (cfg.data.task != "file" or cfg.data.path)
    assert cfg.data.batch_size % cfg.trainer.mini_batches == 0


def test_7b_config_fits_one_node_of_8_gpus_and_is_the_websailor_job():
    from launch.websailor import check_stages

    cfg = load_config(GPU_7B)
    # colocated (rl/placement.py): an engine and a trainer rank on each GPU, one bundle per GPU
    assert cfg.ray.placement == "colocated"
    assert cfg.rollout.num_engines == 8 and cfg.trainer.num_ranks == 8
    assert max(cfg.rollout.num_engines * cfg.rollout.gpus_per_engine, cfg.trainer.num_ranks * cfg.trainer.gpus_per_rank) == 8
    assert check_stages(cfg) is None  # launch/websailor.py accepts it


def test_multinode_config_needs_several_8_gpu_nodes():
    cfg = load_config(MULTINODE, check_inputs=False)
    gpus = cfg.rollout.num_engines * cfg.rollout.gpus_per_engine + cfg.trainer.num_ranks * cfg.trainer.gpus_per_rank
    assert gpus > 8 and gpus % 8 == 0
    cluster = yaml.safe_load(CLUSTER.read_text())
    per_node = cluster["available_node_types"]["gpu_worker"]["resources"]["GPU"]
    assert gpus // per_node <= cluster["available_node_types"]["gpu_worker"]["max_workers"]
    search = cfg.env.tools["search"]
    assert search["backend"] == "serper" and search["api_key_env"] == "SERPER_API_KEY"


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.stem)
def test_gpu_config_tools_limits_and_rewards_build(path, monkeypatch):
    """The env, reward and judge settings are what the actors would build (no network, no GPU)."""
    from envs.server import EnvServer
    from reward.judge import JudgeClient, make_judge
    from reward.worker import RewardWorker

    cfg = load_config(path, check_inputs=False)
    for tool in cfg.env.tools.values():  # keys come from the environment, by name
        for name in (tool.get("api_key_env"), (tool.get("summary") or {}).get("api_key_env")):
            if name:
                monkeypatch.setenv(name, "test-key-not-a-secret")
    # the tools' settings are under test, not the world: a tiny one, and a base URL never contacted
    world = {"seed": cfg.env.world_seed, "size": "tiny"}
    server = EnvServer(cfg.env.tools, world=world, base_url="http://127.0.0.1:9", limits=cfg.env.limits)
    try:
        assert set(server.tools) == set(cfg.env.tools)
        for name, limits in (cfg.env.limits or {}).items():
            for key, value in limits.items():
                assert getattr(server.limits[name], key) == value
    finally:
        server.close()
    judge = make_judge(cfg.reward.judge)
    assert isinstance(judge, JudgeClient)
    worker = RewardWorker(cfg.reward.fns, cfg.reward.composition, cfg.reward.judge)
    parts = {p for fn in worker.fns.values() for p in fn.parts}
    assert parts == {"format", "answer"} and cfg.reward.correct_part in parts
    assert {(t.name, t.weight) for t in worker.composition.terms} == {("format", 0.1), ("answer", 0.9)}
    assert worker.judge is not None and worker.judge.config["backend"] == "openai"  # the answer part uses it


def test_serper_key_is_required_from_the_environment(monkeypatch):
    from envs.server import EnvServer

    cfg = load_config(MULTINODE, check_inputs=False)
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    monkeypatch.setenv("SUMMARY_API_KEY", "test-key-not-a-secret")
    with pytest.raises(ValueError, match="SERPER_API_KEY"):
        EnvServer(cfg.env.tools, world=None, limits=cfg.env.limits)
