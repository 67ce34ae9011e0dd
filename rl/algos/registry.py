"""Named registries of algorithm pieces (advantage estimators, policy losses, ...), with the parameters each declares.

Owns: the one small `Registry` class that every `rl/algos` module uses to publish its functions by name; `Param`, the
declaration of one hyper-parameter of a piece (default, allowed range, the flat config key that also sets it) and its
check; and the snapshot/restore pair that lets user registrations (function and declarations) travel to workers.
Never: imports Ray, cloudpickle or any other part of the project; ships anything itself (the caller, the trainer
group in `rl/`, does the shipping); reads a configuration (`rl.algos.params` maps settings onto declarations).

Declaring parameters
--------------------
A piece lists the keyword arguments the configuration may set, with their defaults and ranges, and may say more
about itself in the registry's `info` fields (e.g. a group sampler's `regenerates`)::

    @POLICY_LOSSES.register("gspo", params={"clip_low": Param(3e-4, ge=0, lt=1), "clip_high": Param(4e-4, ge=0)},
                            aggregation="seq-mean-token-mean")
    def gspo(logprobs, old_logprobs, advantages, loss_mask, clip_low=3e-4, clip_high=4e-4): ...

Registration checks the declaration against the function: every parameter must be one of its arguments, with the
same default, and the default must pass its own check. Arguments the caller supplies at run time (tensors, `rng`,
the global token counts) are not parameters.

Shipping user registrations to Ray workers
------------------------------------------
Built-in entries are registered when `rl.algos` is imported, so every worker has them. An entry registered in the
driver (say a new loss in a launch script) exists only in the driver's process. To reach the workers the trainer
does, once per worker start::

    payload = cloudpickle.dumps(rl.algos.snapshot_registries())    # driver
    rl.algos.restore_registries(cloudpickle.loads(payload))          # every worker, before the first step

`cloudpickle` pickles functions defined in `__main__` or locally by value; functions of an importable module are
pickled by reference, so that module must be importable on the workers (or be passed to
`cloudpickle.register_pickle_by_value`). A snapshot holds `Entry` records, so declarations travel with functions.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_VALUE_TYPES = (bool, int, float, str)
_BOUNDS = (("ge", operator.ge, ">="), ("gt", operator.gt, ">"), ("le", operator.le, "<="), ("lt", operator.lt, "<"))


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of a registered piece.

    default     the value when the configuration says nothing (must equal the function's own default)
    ge gt le lt bounds of a number
    value_type  bool | int | float | str; None: the default's type (a None default needs it)
    nullable    None is allowed (always when the default is None)
    key         the flat `algo.<key>` setting that also sets it (e.g. ppo_clip's clip_low reads algo.clip_low);
                None: only the piece's own `algo.<piece>_args` mapping does
    help        one line for error messages and docs
    """

    default: Any
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    value_type: type | None = None
    nullable: bool = False
    key: str | None = None
    help: str = ""

    def __post_init__(self) -> None:
        kind = self.value_type if self.value_type is not None else type(self.default)
        if kind not in _VALUE_TYPES:
            raise TypeError(f"Param: value_type must be one of bool, int, float, str; got {kind.__name__} "
                            f"(default {self.default!r}: give value_type=...)")
        object.__setattr__(self, "value_type", kind)
        if self.default is None:
            object.__setattr__(self, "nullable", True)

    def check(self, value: Any) -> Any:
        """`value` as this parameter's type, or ValueError saying what is allowed. Numbers may come as strings
        (YAML 1.1 reads `1e-4` as a string): they are converted; a bool is never a number, nor nan or inf."""
        given, kind = value, self.value_type
        if value is None:
            if self.nullable:
                return None
            raise ValueError(f"must be {self.allowed()}, got None")
        if kind in (int, float) and isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise ValueError(f"must be {self.allowed()}, got {given!r}") from None
        accepted = (int, float) if kind is float else kind
        if not isinstance(value, accepted) or isinstance(value, bool) and kind is not bool \
                or kind is float and not math.isfinite(value):
            raise ValueError(f"must be {self.allowed()}, got {given!r}")
        value = kind(value)
        for attr, holds, _ in _BOUNDS:
            bound = getattr(self, attr)
            if bound is not None and not holds(value, bound):
                raise ValueError(f"must be {self.allowed()}, got {given!r}")
        return value

    def allowed(self) -> str:
        """'a float >= 0 and < 1', 'a float > 1 or null', ... for messages."""
        bounds = [f"{sym} {getattr(self, attr)}" for attr, _, sym in _BOUNDS if getattr(self, attr) is not None]
        kind = self.value_type.__name__
        text = f"{'an' if kind == 'int' else 'a'} {kind}" + (f" {' and '.join(bounds)}" if bounds else "")
        return text + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class Entry:
    """A registered piece: the function, its declared parameters (name -> Param) and its info fields."""

    fn: Callable[..., Any]
    params: Mapping[str, Param] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)


class Registry:
    """A name -> function table for one kind of algorithm piece, with each entry's declared parameters.

    `info` names the extra facts an entry of this kind may state, with their defaults (e.g. a group sampler's
    `regenerates`: False); `register` rejects any other.

    >>> LOSSES = Registry("policy loss")
    >>> @LOSSES.register("my_loss", params={"scale": Param(1.0, gt=0)})
    ... def my_loss(x, scale=1.0):
    ...     return x * scale
    >>> LOSSES.get("my_loss") is my_loss, LOSSES.params("my_loss")["scale"].default
    (True, 1.0)
    """

    def __init__(self, kind: str, info: Mapping[str, Any] | None = None) -> None:
        self.kind = kind
        self.info_defaults: dict[str, Any] = dict(info or {})
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, override: bool = False, params: Mapping[str, Param] | None = None, **info: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a function under `name` with its declared `params` and `info` fields; a duplicate
        name is an error unless `override=True`; so is a declaration that does not fit the function."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} registry: a name must be a non-empty string, got {name!r}")
        unknown = sorted(set(info) - set(self.info_defaults))
        if unknown:
            raise TypeError(f"{self.kind} {name!r}: unknown info field(s) {unknown}; "
                            f"allowed: {', '.join(self.info_defaults) or '(none)'}")

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(fn):
                raise TypeError(f"{self.kind} registry: {name!r} must be callable, got {type(fn).__name__}")
            entry = Entry(fn, dict(params or {}), {**self.info_defaults, **info})
            _check_declaration(entry, f"{self.kind} {name!r}")
            self._put(name, entry, override)
            return fn

        return decorator

    def _put(self, name: str, entry: Entry, override: bool) -> None:
        old = self._entries.get(name)
        if old is not None and old.fn is not entry.fn and not override:
            raise ValueError(
                f"{self.kind} {name!r} is already registered ({_describe(old.fn)}); "
                f"pick another name or pass override=True"
            )
        self._entries[name] = entry

    def entry(self, name: str) -> Entry:
        """The entry registered under `name`; `KeyError` listing the registered names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or '(none)'}. "
                f"Register a new one with @<REGISTRY>.register({name!r})"
            ) from None

    def get(self, name: str) -> Callable[..., Any]:
        """The function registered under `name`; `KeyError` listing the registered names otherwise."""
        return self.entry(name).fn

    def params(self, name: str) -> Mapping[str, Param]:
        """The parameters the entry `name` declares (name -> Param)."""
        return self.entry(name).params

    def info(self, name: str, key: str) -> Any:
        """The info field `key` of the entry `name` (its registry's default when the entry does not state it)."""
        if key not in self.info_defaults:
            raise KeyError(f"{self.kind} registry has no info field {key!r}; fields: "
                           f"{', '.join(self.info_defaults) or '(none)'}")
        return self.entry(name).info.get(key, self.info_defaults[key])

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"

    def snapshot(self) -> dict[str, Entry]:
        """A copy of the table (name -> Entry), to be serialised by the caller (cloudpickle) and `restore`d in
        another process."""
        return dict(self._entries)

    def restore(self, snapshot: Mapping[str, Entry | Callable[..., Any]]) -> None:
        """Merge a `snapshot` into this table; its entries win over same-named local ones (the driver is the truth).
        A bare function (an older snapshot) comes in with no declared parameters."""
        for name, entry in snapshot.items():
            if not isinstance(entry, Entry):
                entry = Entry(entry, {}, dict(self.info_defaults))
            self._put(name, entry, override=True)


def _check_declaration(entry: Entry, where: str) -> None:
    """Every declared parameter is an argument of the function with the same default; defaults pass their check."""
    try:
        signature = inspect.signature(entry.fn)
    except (TypeError, ValueError):  # some builtins and C callables have none: nothing to compare with
        signature = None
    arguments = signature.parameters if signature is not None else {}
    takes_any = signature is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in arguments.values())
    for pname, param in entry.params.items():
        if not isinstance(param, Param):
            raise TypeError(f"{where}: parameter {pname!r} must be declared as a Param, got {type(param).__name__}")
        argument = arguments.get(pname)
        by_keyword = takes_any if argument is None else argument.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if not by_keyword:
            raise TypeError(f"{where}: declared parameter {pname!r} is not a keyword argument of "
                            f"{_describe(entry.fn)}{signature or '(...)'}")
        if argument is not None and argument.default is not inspect.Parameter.empty \
                and argument.default != param.default:
            raise ValueError(f"{where}: parameter {pname!r} declares default {param.default!r} but "
                             f"{_describe(entry.fn)} has {argument.default!r}")
        try:
            param.check(param.default)
        except ValueError as err:
            raise ValueError(f"{where}: the default of parameter {pname!r} {err}") from None


def _describe(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", "?")
    qualname = getattr(fn, "__qualname__", type(fn).__name__)
    return f"{module}.{qualname}"
