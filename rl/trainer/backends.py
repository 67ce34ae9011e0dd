"""The trainer backend of a name (`trainer.backend`): fsdp2, deepspeed or sim. Its own module so that the base
class (rl/trainer/base.py) does not import the backends that subclass it.

Never: import a backend other than the one asked for (DeepSpeed is heavy to import).
"""

from __future__ import annotations


def backend_class(name: str) -> type:
    """The trainer class of a backend name (`trainer.backend`); imports only that backend."""
    if name == "fsdp2":
        from rl.trainer.fsdp import FSDPTrainer

        return FSDPTrainer
    if name == "deepspeed":
        from rl.trainer.deepspeed import DeepSpeedTrainer

        return DeepSpeedTrainer
    if name == "sim":  # a latency model for scale tests (rl/trainer/sim.py)
        from rl.trainer.sim import SimTrainer

        return SimTrainer
    raise ValueError(f"unknown trainer backend {name!r}; allowed: 'fsdp2', 'deepspeed', 'sim'")
