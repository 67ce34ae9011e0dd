"""The engine protocol: token ids in, token ids and per-token logprobs out (DESIGN section 3).

Owns: `SamplingParams`, `Generation`, the `Engine` protocol every backend implements, and the
wire format of a weight bucket (the safetensors layout in one uint8 buffer: `pack_bucket`,
`unpack_bucket`) that the trainer side writes and every engine reads.

Never: tokenize or detokenize (the agent loop works in token space), know about training,
Ray, or the trainer's sharding.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import warnings
from dataclasses import dataclass, field, replace
from typing import Iterable, Protocol, runtime_checkable

import torch

FINISH_REASONS = ("stop", "length", "abort")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)
    include_stop_str: bool = False  # keep a matched stop string in the output (VRAG-RL's </search>, </bbox>)

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")

    def derive(self, *keys: int | str) -> "SamplingParams":
        """These params with the seed of one sample (and turn) under this seed: `derive(group, sample)`,
        then `derive(turn)` inside an episode. Distinct keys give distinct, reproducible seeds; no seed
        stays no seed (the engine's own random stream)."""
        if self.seed is None:
            return self
        return replace(self, seed=derive_seed(self.seed, *keys))


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from `seed` and `keys` (a hash: nearby seeds and keys do not collide the way seed + g * n + s
    does across steps and groups)."""
    digest = hashlib.blake2b(repr((int(seed),) + keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class Generation:
    """One completion: the sampled ids, the engine's logprob of each, and why it ended.

    `logprobs[i]` is log pi(token_ids[i] | prompt, token_ids[:i]) under the engine's weights,
    computed from logits divided by the temperature (the trainer does the same).
    `finish_reason` is "stop" (EOS or a stop string/id), "length" (max_tokens) or "abort".
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    policy_version: int = 0
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"Generation: {len(self.token_ids)} token ids but {len(self.logprobs)} logprobs"
            )
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Generation.finish_reason {self.finish_reason!r} not in {FINISH_REASONS}")


@runtime_checkable
class Engine(Protocol):
    """What the rollout side needs of an inference engine."""

    policy_version: int

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams,
                       request_id: str | None = None, images: list | None = None) -> Generation:
        """`images` (a vision-language model): every image the prompt shows, in order, as encoded bytes
        or PIL images; `prompt_ids` holds each one's <|image_pad|> ids expanded (rollout/vision.py)."""

    async def update_weights(self, buckets: Iterable[bytes], version: int) -> None:
        """Load a full state (HF parameter names) delivered as safetensors buckets."""

    async def sleep(self) -> None: ...

    async def wake(self) -> None: ...

    async def shutdown(self) -> None: ...


# --- weight buckets -----------------------------------------------------------------------
#
# One bucket on the wire is the safetensors layout: an 8-byte little-endian header length, a JSON header
# {name: {dtype, shape, data_offsets}} padded with spaces so the data start 8-byte aligned, then the
# tensors' bytes back to back in the order given. `BucketWriter` (and `pack_bucket`, for pairs at hand)
# copies each tensor once into a uint8 buffer the caller may allocate anywhere (host, shared or CUDA
# memory), casting floating tensors to the serving dtype on the way; `unpack_bucket` reads it back as
# views, without a copy. Any safetensors reader reads a packed bucket, and `unpack_bucket` reads what
# `safetensors.torch.save` wrote.

_WIRE_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64",
                torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_TORCH_DTYPES = {code: dtype for dtype, code in _WIRE_DTYPES.items()}


def wire_dtype(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype `t` travels in: `dtype` (the engines' serving dtype) for floating tensors, else its own."""
    return dtype if dtype is not None and t.is_floating_point() else t.dtype


def _entry(name: str, t: torch.Tensor, dtype: torch.dtype | None, offset: int) -> tuple[str, torch.dtype, int]:
    """The JSON header entry of `t` at data `offset`, its wire dtype and byte size."""
    d = wire_dtype(t, dtype)
    if d not in _WIRE_DTYPES:
        raise TypeError(f"weight bucket: tensor {name!r} has dtype {d}, which has no safetensors code")
    size = t.numel() * d.itemsize
    info = {"dtype": _WIRE_DTYPES[d], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
    return f"{json.dumps(name)}:{json.dumps(info, separators=(',', ':'))}", d, size


class BucketWriter:
    """One bucket built tensor by tensor: each tensor is copied (and cast to `dtype` if floating) into its
    place as it is added, so the caller may drop it at once; `finish()` writes the header just in front of
    the data and returns the bucket, a 1-D view of the buffer from `allocate(header_room + capacity)`.

    capacity: bytes of tensor data; header_room: bytes kept in front for the length and the JSON header
    (a multiple of 8, so data keep the alignment they will have in the bucket)."""

    def __init__(self, capacity: int, dtype: torch.dtype | None = None, allocate=None, header_room: int = 64 << 10):
        if header_room % 8 or header_room < 16:
            raise ValueError(f"BucketWriter: header_room must be a multiple of 8 and >= 16, got {header_room}")
        self.capacity, self.dtype, self.room = capacity, dtype, header_room
        n = header_room + capacity
        self.buf = allocate(n) if allocate is not None else torch.empty(n, dtype=torch.uint8)
        self.entries: list[str] = []
        self.size = 0

    def _header_len(self, extra: str = "") -> int:
        entries = self.entries + [extra] if extra else self.entries
        return 2 + sum(map(len, entries)) + max(len(entries) - 1, 0)

    def fits(self, name: str, t: torch.Tensor) -> bool:
        """Whether `t` still fits (an empty writer takes anything its buffer holds)."""
        entry, _, size = _entry(name, t, self.dtype, self.size)
        header = self._header_len(entry)
        return self.size + size <= self.capacity and 8 + header + (-header % 8) <= self.room

    def add(self, name: str, t: torch.Tensor) -> None:
        if not self.fits(name, t):
            raise ValueError(f"weight bucket: tensor {name!r} ({tuple(t.shape)}) does not fit: {self.size} of "
                             f"{self.capacity} data bytes and {self._header_len()} header bytes used")
        entry, d, size = _entry(name, t, self.dtype, self.size)
        at = self.room + self.size
        place, t = self.buf[at:at + size], t.detach()
        if at % d.itemsize == 0:
            place.view(d).view(t.shape).copy_(t)  # cast and copy in one pass, any layout, any device
        else:  # unaligned (mixed dtypes): through a contiguous temporary
            place.copy_(t.to(d).contiguous().reshape(-1).view(torch.uint8))
        self.entries.append(entry)
        self.size += size

    def finish(self) -> torch.Tensor:
        raw = ("{" + ",".join(self.entries) + "}").encode()
        raw += b" " * (-len(raw) % 8)
        start = self.room - 8 - len(raw)
        head = torch.frombuffer(bytearray(struct.pack("<Q", len(raw)) + raw), dtype=torch.uint8)
        self.buf[start:self.room].copy_(head)
        return self.buf[start:self.room + self.size]


def pack_bucket(named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None,
                allocate=None) -> torch.Tensor:
    """(name, tensor) pairs as one bucket: a 1-D uint8 tensor from `allocate(nbytes)` (default: host
    memory) of exactly the bucket's size, each tensor copied once (cast to `dtype` if floating)."""
    items = [(name, t.detach()) for name, t in named_tensors]
    entries, offset = [], 0
    for name, t in items:
        entry, _, size = _entry(name, t, dtype, offset)
        entries.append(entry)
        offset += size
    header = 2 + sum(map(len, entries)) + max(len(entries) - 1, 0)
    writer = BucketWriter(offset, dtype, allocate, header_room=8 + header + (-header % 8))
    for name, t in items:
        writer.add(name, t)
    return writer.finish()


def unpack_bucket(data) -> list[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs of one bucket (a uint8 tensor on any device, or any bytes-like), in data
    order, as views of `data` (an unaligned tensor is copied): keep `data` alive and unchanged while
    they are used."""
    if torch.is_tensor(data):
        buf = data.reshape(-1)
    else:
        with warnings.catch_warnings():  # read-only bytes: the views are only read
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            buf = torch.frombuffer(data, dtype=torch.uint8) if len(data) else torch.empty(0, dtype=torch.uint8)
    if buf.dtype != torch.uint8:
        raise TypeError(f"weight bucket: expected uint8 data, got {buf.dtype}")
    if buf.numel() < 8:
        raise ValueError(f"weight bucket: {buf.numel()} byte(s), shorter than the 8-byte header length")
    n = int.from_bytes(buf[:8].cpu().numpy().tobytes(), "little")
    if 8 + n > buf.numel():
        raise ValueError(f"weight bucket: header of {n} bytes does not fit in {buf.numel()} bytes")
    try:
        header = json.loads(buf[8:8 + n].cpu().numpy().tobytes())
    except ValueError as err:
        raise ValueError(f"weight bucket: unreadable header ({err})") from None
    header.pop("__metadata__", None)
    start, out = 8 + n, []
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if info["dtype"] not in _TORCH_DTYPES:
            raise ValueError(f"weight bucket: tensor {name!r} has unknown dtype {info['dtype']!r}")
        d, (a, b) = _TORCH_DTYPES[info["dtype"]], info["data_offsets"]
        if not 0 <= a <= b <= buf.numel() - start or b - a != math.prod(info["shape"]) * d.itemsize:
            raise ValueError(f"weight bucket: tensor {name!r} (shape {info['shape']}, {info['dtype']}) does not "
                             f"match its data offsets {[a, b]} in {buf.numel() - start} data bytes")
        piece = buf[start + a:start + b]
        if (start + a) % d.itemsize:
            piece = piece.clone()
        out.append((name, piece.view(d).view(info["shape"])))
    return out


def host_bytes(data):
    """A bucket (a uint8 tensor on any device, or anything bytes-like) as a uint8 numpy array in host
    memory, without a copy when it already is there."""
    import numpy as np

    if torch.is_tensor(data):
        return data.reshape(-1).cpu().numpy()
    return np.frombuffer(data, dtype=np.uint8)


def cpu_bf16_warning(key: str) -> str | None:
    """A warning naming `key` when this process computes in bfloat16 on an x86 CPU without native bfloat16
    math (AVX512-BF16 or AMX): every bf16 operation is then converted in software. Measured on an AVX2-only
    AMD EPYC (2 cores): a LoRA SFT step of SmolLM2-135M took 167 s in bf16 against 5.4-5.7 s in fp32.
    None where the CPU has it, where this is not x86, or where torch cannot tell."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if None in checks or any(check() for check in checks):
        return None
    return (f"{key}=bfloat16 on a CPU without native bfloat16 math (AVX512-BF16 or AMX): every bf16 operation is "
            f"emulated in software (measured on such a CPU: a SmolLM2-135M SFT step took 167 s in bf16 against "
            f"5.5 s in float32). Set {key}=float32 where memory allows (--dry-run)")


_KEEPS_FREED_MEMORY = False


def keep_freed_memory() -> bool:
    """Make this process keep the memory it frees for reuse (glibc's allocator: no mmap for large blocks,
    no trimming; vLLM asks for tcmalloc on CPU for the same reason). A weight sync allocates and frees
    bucket- and layer-sized blocks every time, and on CPU fresh pages cost about five copies (a page fault
    per 4 KiB). CPU processes only (GPU hosts keep the default); returns whether it is in effect."""
    global _KEEPS_FREED_MEMORY
    if not _KEEPS_FREED_MEMORY and not torch.cuda.is_available():
        import ctypes

        try:
            libc = ctypes.CDLL("libc.so.6")
            M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
            _KEEPS_FREED_MEMORY = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
        except (OSError, AttributeError):  # not glibc
            _KEEPS_FREED_MEMORY = False
    return _KEEPS_FREED_MEMORY


def encode_bucket(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> bytes:
    """`pack_bucket` as bytes (small payloads and tests; the transports move the packed tensor itself)."""
    return pack_bucket(named_tensors).numpy().tobytes()


def decode_bucket(data) -> list[tuple[str, torch.Tensor]]:
    """`unpack_bucket`: the pairs of one bucket, views of `data`."""
    return unpack_bucket(data)


async def aiter_buckets(buckets):

    """Iterate weight buckets given as a list or any iterable, or an async iterable (a transport's
    stream: its waits then run off the event loop, so generation goes on meanwhile)."""
    if hasattr(buckets, "__aiter__"):
        async for data in buckets:
            yield data
    else:
        for data in buckets:
            yield data
