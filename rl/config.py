"""Configuration: msgspec Structs, YAML files, dotted command-line overrides, clear errors.

Owns: the typed tree of every setting a run reads (`Config`), loading it from a YAML file plus
`a.b.c=value` overrides, and turning every mistake into one `ConfigError` that names the key
path, says where it came from (file or command line) and what is allowed. The edge of the
system: code below takes plain values from these Structs.

Never: start anything. A bad configuration must fail here, before any actor starts.
"""

from __future__ import annotations

import re
import typing
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
Prob = Annotated[float, Meta(gt=0, le=1)]


class ConfigError(ValueError):
    """A configuration mistake; the message names the key, its source and what is allowed."""


class _Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ModelConfig(_Base):
    path: Annotated[str, Meta(description="model folder or hub name; 'tiny' builds the offline tiny Qwen3, "
                                                    "'tiny_vl' the tiny Qwen2.5-VL")] = "tiny"
    tokenizer: Annotated[Literal["local", "qwen3", "world"], Meta(
        description="tokenizer of the tiny model: local (BPE on built-in text), qwen3 (the real one), world (BPE "
                    "also trained on the synthetic world's pages: names are one or two tokens)")] = "local"
    dtype: Annotated[Literal["float32", "bfloat16"], Meta(description="training parameter dtype")] = "float32"
    tiny: Annotated[dict, Meta(description="path=tiny: sizes of the tiny model (rl/models.py build_tiny_model: "
                                           "vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, head_dim, "
                                           "intermediate_size, max_position_embeddings, seed)")] = msgspec.field(default_factory=dict)


class RolloutConfig(_Base):
    backend: Annotated[Literal["vllm", "hf"], Meta(description="inference engine")] = "vllm"
    num_engines: PosInt = 1
    n: Annotated[int, Meta(ge=2, description="samples per task (group size G); >= 2 for group advantages")] = 8
    max_tokens: Annotated[int, Meta(ge=1, description="max generated tokens per sample")] = 16
    temperature: NonNegFloat = 1.0
    top_p: Prob = 1.0
    max_model_len: PosInt = 2048
    gpu_memory_utilization: Annotated[float, Meta(gt=0, le=1, description="vLLM; 0.3 on CPU")] = 0.3
    kv_cache_gib: Annotated[float, Meta(gt=0, description="vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)")] = 2.0
    enforce_eager: bool = True
    cpus_per_engine: NonNegFloat = 1.0
    gpus_per_engine: NonNegFloat = 0.0
    request_timeout_s: PosFloat = 600.0
    max_inflight_groups: Annotated[int, Meta(ge=1, description="tasks in flight per engine; new tasks go to the least-loaded engine as groups finish")] = 16
    mode: Annotated[Literal["sync", "async"], Meta(description="async: rollout of step t+1 overlaps training of step t")] = "sync"
    max_staleness: Annotated[int, Meta(ge=0, description="async: max policy versions between a trajectory's oldest turn and the update that trains on it")] = 1
    partial_rollout: Annotated[Literal["continue", "abort"], Meta(description="async: episodes in flight at a weight sync go on under the new weights, or are aborted and their tasks re-queued")] = "continue"


class TrainerConfig(_Base):
    backend: Annotated[Literal["fsdp2", "deepspeed"], Meta(description="fsdp2 (torch FSDP2) or deepspeed (ZeRO)")] = "fsdp2"
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
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: Annotated[float, Meta(ge=0, description="max grad norm; 0 disables")] = 1.0
    warmup_steps: NonNegInt = 0
    micro_batch_size: Annotated[int, Meta(ge=1, description="rows per forward/backward when token_budget = 0")] = 8
    mini_batches: Annotated[int, Meta(ge=1, description="optimizer steps per rollout batch")] = 1
    cpus_per_rank: NonNegFloat = 1.0
    gpus_per_rank: NonNegFloat = 0.0
    seed: int = 0
    weight_transport: Annotated[Literal["object_store", "disk", "collective"], Meta(
        description="how weights reach the engines: Ray object store; files in run.dir/weights; a torch.distributed "
                    "broadcast (NCCL on GPU, gloo on CPU)")] = "object_store"
    weight_bucket_mb: Annotated[int, Meta(ge=1, description="size of one weight bucket")] = 64
    weight_window: Annotated[int, Meta(ge=1, description="buckets in flight at most (bounded memory)")] = 2


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

    format: Annotated[Literal["react", "vrag"], Meta(description="action grammar (rollout/formats): react (WebSailor) or vrag (VRAG-RL)")] = "react"
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
    composition: Annotated[dict | str | None, Meta(description="a preset (websailor, vrag, evolvesearch, masksearch) or weights and gates (reward/compose.py); None: every part with weight 1")] = None
    judge: Annotated[dict | None, Meta(description="judge of the judge rewards: {backend: rule | openai | engine, ...} (reward/judge.py make_judge)")] = None
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


class EvalConfig(_Base):
    """Evaluation before and after each training stage on held-out questions."""

    num_tasks: Annotated[int, Meta(ge=1, description="held-out questions (never trained on)")] = 32
    k: Annotated[int, Meta(ge=1, description="runs per question: Pass@1 is averaged over them, Pass@k any of them")] = 3
    temperature: NonNegFloat = 0.6
    top_p: Prob = 0.95


class PipelineConfig(_Base):
    stages: Annotated[list[str], Meta(description="recipe stages to run, in order (see the recipe's --help)")] = \
        msgspec.field(default_factory=lambda: ["expert", "eval_base", "sft", "eval_sft", "rl", "eval_rl"])


class RunConfig(_Base):
    dir: Annotated[str | None, Meta(description="run folder; default runs/<name>-<time>")] = None
    name: str = "websailor"
    steps: PosInt = 20
    seed: int = 0
    stage_timeout_s: Annotated[float, Meta(gt=0, description="max seconds any stage may wait")] = 1800.0
    progress: bool = True
    save_every: Annotated[int, Meta(ge=0, description="checkpoint every N steps (and at the end); 0 = never")] = 0
    keep_last: PosInt = 2
    resume: Annotated[bool, Meta(description="continue from the newest complete checkpoint in run.dir")] = False
    loggers: Annotated[list[Literal["tensorboard", "wandb", "mlflow"]], Meta(
        description="metric sinks besides metrics.jsonl (pip install windward[logging])")] = msgspec.field(default_factory=list)
    save_trajectories: Annotated[bool, Meta(description="write every step's trajectories to run.dir/trajectories/*.parquet")] = True


class RayConfig(_Base):
    address: Annotated[str | None, Meta(description="existing cluster; None: the job's cluster or a new local one")] = None
    num_cpus: Annotated[int | None, Meta(description="logical CPUs of a new local cluster")] = None


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
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"command-line override {text!r}: value is not valid YAML ({err})") from None
    return key, value


def _flatten_keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        path = f"{prefix}{k}"
        out.add(path)
        if isinstance(v, dict):
            out |= _flatten_keys(v, path + ".")
    return out


def _type_at(path: list[str]):
    """The annotation at a key path of Config, or None."""
    typ: Any = Config
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
    base = _strip(typ)
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


def _value_at(tree: dict, parts: list[str]):
    node: Any = tree
    for k in parts:
        if not isinstance(node, dict) or k not in node:
            return "<default>"
        node = node[k]
    return node


def _explain(err: msgspec.ValidationError, tree: dict, file_keys: set[str], cli_keys: set[str],
             source: str) -> str:
    msg = str(err)
    m = re.search(r" - at `\$\.?(.*)`$", msg)
    path = m.group(1) if m else ""
    body = msg[: m.start()] if m else msg
    parts = [p for p in re.split(r"\.|\[\d+\]", path) if p]
    unknown = re.match(r"Object contains unknown field `(.+)`", body)
    if unknown:
        key = ".".join(parts + [unknown.group(1)])
        parent = _type_at(parts)
        where = "command line" if key in cli_keys else source
        return f"unknown key '{key}' (from the {where}); allowed {_allowed(parent)}"
    key = ".".join(parts) or "(top level)"
    where = "command line" if key in cli_keys else (source if key in file_keys else "defaults")
    typ = _type_at(parts)
    allowed = f"; allowed: {_allowed(typ)}" if typ is not None else ""
    return (f"bad value for '{key}' (from the {where}): {body} (given {_value_at(tree, parts)!r})"
            f"{allowed}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """YAML file (optional) + dotted overrides -> validated Config, or ConfigError."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
        source = f"config file {p}"
    file_keys = _flatten_keys(tree)
    cli_keys = set()
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        cli_keys.add(key)
    _apply_preset(tree)
    try:
        cfg = msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as err:
        raise ConfigError(_explain(err, tree, file_keys, cli_keys, source)) from None
    _check_algo(cfg.algo)
    _check_trainer(cfg.trainer)
    tiny_keys = {"vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "intermediate_size", "max_position_embeddings", "seed"}
    unknown = sorted(set(cfg.model.tiny) - tiny_keys)
    if unknown:
        raise ConfigError(f"unknown key(s) {['model.tiny.' + k for k in unknown]}; allowed: {sorted(tiny_keys)}")
    if cfg.data.task == "file" and not cfg.data.path:
        raise ConfigError("data.task='file' needs data.path: a jsonl or parquet file of {uid, question, answer}")
    if cfg.data.qa_one_page and cfg.data.qa_anchor_rate == 0:
        raise ConfigError("data.qa_one_page=true needs data.qa_anchor_rate > 0: a level-1 question names the entity "
                          "whose page answers it")
    return cfg


def _apply_preset(tree: dict) -> None:
    """Fill the algo fields the user did not give from the chosen preset (user values win)."""
    from rl.algos.presets import PRESETS

    algo = tree.get("algo")
    if algo is None:
        algo = tree["algo"] = {}
    if not isinstance(algo, dict):
        return  # msgspec reports the type error with the key path
    name = algo.get("preset", "grpo")
    if name in PRESETS:  # an unknown name is reported by msgspec with the allowed ones
        for key, value in PRESETS[name].items():
            algo.setdefault(key, value)


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
    if algo.dual_clip is not None and algo.dual_clip <= 1:
        raise ConfigError(f"bad value for 'algo.dual_clip': must be > 1 or null, got {algo.dual_clip}")
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
