"""A run's newest checkpoint as a Hugging Face model folder (the full model is written only on request).

    python launch/export.py RUN_DIR [--out DIR]      # default DIR: RUN_DIR/export; the model lands in DIR/policy

The FSDP2 trainer writes sharded checkpoints (each rank its own shards, rl/trainer/fsdp.py); this reads
the newest complete one in one process into the run's base model and saves it with its tokenizer
(rl/export.py). The folder then loads anywhere a model path does: `model.path=DIR/policy`, vLLM, transformers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rl.config import ConfigError, load_config  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, help="a run folder (with config.json and checkpoints/)")
    p.add_argument("--out", type=Path, help="where to write (default RUN_DIR/export)")
    args = p.parse_args(argv)
    from rl.export import export_checkpoint, model_overrides

    run_dir = args.run_dir.resolve()
    try:
        cfg = load_config(None, model_overrides(run_dir))  # the run's base model, before training
        folder, step = export_checkpoint(run_dir, cfg, (args.out or run_dir / "export").resolve())
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"export: {err}", file=sys.stderr)
        return 2
    print(f"step {step} of {run_dir} -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
