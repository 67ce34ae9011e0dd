"""Worker extension mixed into every vLLM worker (`worker_extension_cls`): weights in place, bucket by bucket.

Owns: one weight-update session per sync inside the vLLM worker process, on vLLM's own layerwise reload
(the path of its NCCL weight-transfer engine): `windward_begin_update` puts every layer on the meta
device and wraps its weight loaders, each bucket then goes through `model.load_weights` (a layer is
materialized, loaded, processed for serving (cast to the serving dtype, CPU GEMM packing) and copied
back into its old storage as soon as all its elements arrived, so a stacked qkv or gate_up split across
two buckets just waits for its other shards), and `windward_finish_update` processes what is left and
drops the caches. The whole state is never staged: a bucket's memory goes once its layers are done.

A tied word embedding (one weight shared by the embedding and the output layer) loads once, through the
output layer (`tied_embeddings`): that builds the kernel the logits use and writes the storage the lookup
reads; its copy under the embedding's name is skipped, and an update that brings the embedding without
the output layer is an error, not a stale engine.

Two ways in: `windward_receive(stream)`, where the worker iterates a transport's portable stream itself
(the collective / ipc / disk transports: the buckets come straight from the trainer into this process),
and `windward_load_bucket(bytes)` between begin and finish, one RPC per bucket, for the others. A session
that fails half way is still finished (no layer left on the meta device) and the error says the engine
then holds a mix of versions, which the next full sync repairs.

Never: imported by anything but vLLM's worker process (it relies on `self` being a vLLM Worker), and never
import the trainer side: a stream arrives pickled and is only iterated.
"""

from __future__ import annotations

import logging
import pickle
import time

import torch

from rollout.engines.base import keep_freed_memory, unpack_bucket


class WindwardWorkerExtension:
    def _windward_model(self):
        return self.model_runner.get_model()

    def windward_begin_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        if getattr(self, "_windward_updating", False):
            raise RuntimeError("windward_begin_update: a weight update is already in progress in this worker")
        keep_freed_memory()  # every update rebuilds every layer: on CPU, warm memory instead of fresh pages
        model = self._windward_model()
        self._windward_tied = tied_embeddings(model) if self.vllm_config.quant_config is None else {}
        self._windward_names: set[str] = set()
        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(model)  # layers go to the meta device: shared weights are no longer shared
        self._windward_updating = True

    def windward_load_bucket(self, data) -> int:
        """Load one bucket (bytes-like or a uint8 tensor) into the model; returns its tensor count. A tied
        word embedding loads through its output layer's name alone (`tied_embeddings`)."""
        from vllm.config import set_current_vllm_config

        if not getattr(self, "_windward_updating", False):
            raise RuntimeError("windward_load_bucket: no weight update in progress (call windward_begin_update)")
        named = unpack_bucket(data)
        self._windward_names.update(name for name, _ in named)
        with set_current_vllm_config(self.vllm_config):
            self._windward_model().load_weights((n, t) for n, t in named if n not in self._windward_tied)
        return len(named)

    def windward_finish_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if not getattr(self, "_windward_updating", False):
            raise RuntimeError("windward_finish_update: no weight update in progress")
        self._windward_updating = False
        skipped = {e: o for e, o in self._windward_tied.items() if e in self._windward_names}
        quiet = _Quiet([f"{type(self._windward_model().get_submodule(e.rpartition('.')[0])).__name__}: "
                        "Failed to load weights" for e in skipped])  # loaded through the output layer
        layerwise = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        layerwise.addFilter(quiet)
        try:
            with set_current_vllm_config(self.vllm_config):
                finalize_layerwise_reload(self._windward_model(), self.vllm_config.model_config)
        finally:
            layerwise.removeFilter(quiet)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):  # as vLLM's reload_weights
            fn = getattr(self.model_runner, reset, None)
            if fn is not None:
                fn()
        missing = {e: o for e, o in skipped.items() if o not in self._windward_names}
        if missing:
            raise RuntimeError(f"weight update: {sorted(missing)} arrived without {sorted(missing.values())}, which "
                               "share(s) its weight in this engine and loads it: send a tied weight under the output "
                               "layer's name (the trainer sends it there alone, `tied_aliases`); the engine keeps its old word embedding until then")

    def windward_receive(self, stream: bytes) -> dict:
        """Iterate a pickled portable bucket stream (`rl/weights`) in this process and load each bucket as
        it arrives. Returns {"buckets", "tensors", "bytes", "seconds"}."""
        stream = pickle.loads(stream)
        t0 = time.perf_counter()
        buckets = tensors = nbytes = 0
        self.windward_begin_update()
        failed = None
        try:
            for data in stream:
                tensors += self.windward_load_bucket(data)
                buckets += 1
                nbytes += len(data)
                del data  # the engine keeps views only while a layer waits for the rest of its shards
        except Exception as err:
            failed = err
        try:
            self.windward_finish_update()  # no layer stays on the meta device
        except Exception:
            if failed is None:
                raise  # else the stream's own error says more
        if failed is not None:
            raise RuntimeError(f"weight update failed after {buckets} bucket(s); the engine now holds a mix of "
                               f"the old and the new weights until the next full sync: {failed!r}") from failed
        return {"buckets": buckets, "tensors": tensors, "bytes": nbytes, "seconds": time.perf_counter() - t0}


def tied_embeddings(model) -> dict[str, str]:
    """{word embedding weight: output layer weight} for every embedding whose weight an output layer shares
    (tied word embeddings) in a live vLLM model. Such a weight loads once, through the output layer: its
    processing builds the kernel the logits use (oneDNN on CPU) and writes the shared storage the embedding
    reads as is; processing the embedding too would only build a kernel nothing uses."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    owners: dict[int, list[tuple[str, type]]] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(module, VocabParallelEmbedding) and isinstance(weight, torch.nn.Parameter):
            owners.setdefault(id(weight), []).append((f"{prefix}.weight", type(module)))
    out = {}
    for names in owners.values():
        inputs = [name for name, cls in names if cls is VocabParallelEmbedding]
        outputs = [name for name, cls in names if issubclass(cls, ParallelLMHead)]
        if len(inputs) == 1 and len(outputs) == 1 and len(names) == 2:
            out[inputs[0]] = outputs[0]
    return out


class _Quiet(logging.Filter):
    """Drops the given log messages (vLLM's warning for an embedding that loaded through its output layer)."""

    def __init__(self, messages: list[str]):
        super().__init__()
        self.messages = set(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.messages
