"""From the algorithm settings to the keyword arguments of each chosen piece, and their check at load.

Owns: `PIECES` (which setting chooses a piece of which registry), `piece_kwargs` (the arguments a piece gets: only
those it declares) and `check_piece_params` (every mistake in them, said before anything starts).
Never: imports Ray, torch.distributed or any other part of the project; takes config objects (the settings come as a
plain mapping, e.g. `msgspec.to_builtins(cfg.algo)`); knows any piece's parameters itself (each piece declares its
own, `rl.algos.registry.Param`), so a new loss with a new hyper-parameter needs no change here, in the trainer or in
the controller.

Where a parameter's value comes from, first match wins:

    algo.<field>_args.<name>   the chosen piece's own mapping, e.g. algo.policy_loss_args: {clip_low: 3e-4}
    algo.<key>                 a flat setting the parameter reads (Param.key), e.g. ppo_clip's clip_low <- algo.clip_low
    Param.default              the piece's own default (gspo: clip 3e-4 / 4e-4, whatever the preset's PPO range is)

with <field> one of adv_estimator, policy_loss, kl_estimator, sampler (`PIECES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rl.algos.advantages import ADVANTAGES
from rl.algos.kl import KL_ESTIMATORS
from rl.algos.losses import POLICY_LOSSES
from rl.algos.registry import Registry
from rl.algos.sampling import GROUP_SAMPLERS

# setting that names the piece -> its registry; the piece's own parameters are in the setting "<field>_args"
PIECES: dict[str, Registry] = {
    "adv_estimator": ADVANTAGES,
    "policy_loss": POLICY_LOSSES,
    "kl_estimator": KL_ESTIMATORS,
    "sampler": GROUP_SAMPLERS,
}


def _registry(field: str) -> Registry:
    if field not in PIECES:
        raise KeyError(f"unknown algorithm piece setting {field!r}; settings: {', '.join(PIECES)}")
    return PIECES[field]


def piece_kwargs(field: str, name: str, algo: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the piece `name` chosen by the setting `field` (e.g. "policy_loss", "gspo"), from
    the settings `algo`: every parameter it declares, checked, and nothing else.

    ValueError names the setting and the piece: a key of `algo.<field>_args` the piece does not declare, or a value
    outside its declared range.
    """
    registry = _registry(field)
    declared = registry.params(name)
    args_key = f"{field}_args"
    given = algo.get(args_key) or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"bad value for 'algo.{args_key}': must be a mapping of parameter -> value, got {given!r}")
    piece = f"{registry.kind} {name!r}"
    unknown = [key for key in given if key not in declared]
    if unknown:
        listed = ", ".join(f"'algo.{args_key}.{key}'" for key in unknown)
        raise ValueError(f"unknown parameter {listed} for {piece}; its parameters: "
                         f"{', '.join(declared) or '(none)'}")
    kwargs = {}
    for pname, param in declared.items():
        if pname in given:
            value, where = given[pname], f"algo.{args_key}.{pname}"
        elif param.key is not None and param.key in algo:
            value, where = algo[param.key], f"algo.{param.key}"
        else:
            value, where = param.default, f"algo.{args_key}.{pname}"
        try:
            kwargs[pname] = param.check(value)
        except ValueError as err:
            raise ValueError(f"bad value for '{where}' (parameter {pname} of {piece}): {err}") from None
    return kwargs


def check_piece_params(algo: Mapping[str, Any], preset: Mapping[str, Any] | None = None) -> list[str]:
    """Every problem with the parameters of the chosen pieces, as messages naming the setting and the piece.

    Besides `piece_kwargs`'s checks: a flat setting that only some pieces read (algo.clip_low, clip_high, dual_clip:
    ppo_clip's; norm_adv_by_std: grpo's) given a value other than the `preset`'s while the chosen piece does not
    read it, e.g. algo.clip_high=0.3 with policy_loss=gspo, whose clip range is its own
    (algo.policy_loss_args.clip_high). A value equal to the preset's cannot be told from the preset's and is not
    reported.
    """
    problems = []
    for field, registry in PIECES.items():
        name = algo.get(field)
        if name is None or name not in registry:
            continue  # an unknown name is reported by the caller with the registered ones
        try:
            piece_kwargs(field, name, algo)
        except ValueError as err:
            problems.append(str(err))
        declared = registry.params(name)
        read = {param.key for param in declared.values()}
        for key, readers in _flat_keys(registry).items():
            if key in read or key not in algo or preset is None or key not in preset or algo[key] == preset[key]:
                continue
            own = f"algo.{field}_args.{key}" if key in declared else \
                f"algo.{field}_args (its parameters: {', '.join(declared) or 'none'})"
            problems.append(f"'algo.{key}'={algo[key]!r} is not read by the chosen {registry.kind} {name!r} (it is a "
                            f"parameter of {', '.join(map(repr, readers))}); set {name}'s own with {own}")
    return problems


def _flat_keys(registry: Registry) -> dict[str, list[str]]:
    """Flat setting -> the names of the registered pieces whose parameters read it."""
    keys: dict[str, list[str]] = {}
    for name in registry.names():
        for param in registry.params(name).values():
            if param.key is not None:
                keys.setdefault(param.key, []).append(name)
    return keys
