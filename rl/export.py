"""A run's checkpoint as a model folder: the full model is written only here, when asked for.

Owns: reading the newest complete checkpoint of a run folder (rl/checkpoint.py) into the run's base model
and writing it with its tokenizer as a Hugging Face folder that every engine and `model.path` load.
The FSDP2 trainer's checkpoints are sharded (`<step>/trainer/`, torch.distributed.checkpoint, one file
per rank); they are read here in one process, resharded into full tensors, through the same
weights_only rules as a resume. A checkpoint from before sharding (`trainer.pt`) is read as well.

Used by `launch/evaluate.py --policy RUN_DIR` and `python launch/export.py RUN_DIR --out DIR` (verl's
model merger, OpenRLHF's save of the HF model).

Never: train, or write anything into the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from rl.config import Config, ConfigError, to_dict


def run_overrides(run_dir: Path) -> list[str]:
    """The settings of a finished run (its config.json) as dotted overrides: the keys that differ from the
    defaults, i.e. what the run set (a full dump would set keys the run never read)."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no config.json (written when a run's RL stage starts); not a run folder?")
    ran, default = json.loads(path.read_text()), to_dict(Config())
    out = []
    for section, values in ran.items():
        for key, value in values.items():
            if default.get(section, {}).get(key) != value and section != "pipeline":
                out.append(f"{section}.{key}={json.dumps(value)}")
    return out


def model_overrides(run_dir: Path) -> list[str]:
    """The run's settings that say which base model it trained (what `resolve_model_path` reads: the model
    section, and the world a `tokenizer: world` tiny model was built on, with the task that reads it), enough
    for `export_checkpoint`."""
    return [o for o in run_overrides(run_dir)
            if o.startswith("model.") or o.split("=", 1)[0] in ("env.world_seed", "env.world_size", "data.task")]


def export_checkpoint(run_dir: Path, cfg: Config, out: Path) -> tuple[Path, int]:
    """The newest complete checkpoint of `run_dir` as a model folder `out/policy` -> (folder, its step)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl.checkpoint import CheckpointManager, load_state, read_sharded
    from rl.groups import resolve_model_path
    from rl.trainer.fsdp import SHARDED_DIR

    found = CheckpointManager(run_dir).latest()
    if found is None:
        raise ValueError(f"{run_dir}/checkpoints has no complete checkpoint (run with run.save_every > 0)")
    step, folder = found
    base = resolve_model_path(cfg)  # the run's policy before training (tiny and package models built here)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if (folder / SHARDED_DIR / ".metadata").is_file():  # sharded (the FSDP2 trainer)
        state = {k[len("model."):]: v for k, v in read_sharded(folder / SHARDED_DIR).items() if k.startswith("model.")}
    elif (folder / "trainer.pt").is_file():  # written before checkpoints were sharded
        state = load_state(folder / "trainer.pt")["model"]
    else:
        raise ValueError(f"{folder}: neither trainer/ (the fsdp2 trainer's sharded checkpoint) nor trainer.pt; "
                         f"other trainers' checkpoints are not read")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise ValueError(f"{folder} does not fit {base}: missing {missing[:5]}, unexpected {unexpected[:5]} "
                         f"(a LoRA run? merge the adapter first)")
    target = out / "policy"
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target, step

