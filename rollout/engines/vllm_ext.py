"""Worker extension mixed into every vLLM worker (`worker_extension_cls`): weights in place, bucket by bucket.

Owns: one weight-update session per sync inside the vLLM worker process, on vLLM's own layerwise reload
(the path of its NCCL weight-transfer engine): `windward_begin_update` puts every layer on the meta
device and wraps its weight loaders, each bucket then goes through `model.load_weights` (a layer is
materialized, loaded, processed for serving (cast to the serving dtype, CPU GEMM packing) and copied
back into its old storage as soon as all its elements arrived, so a stacked qkv or gate_up split across
two buckets just waits for its other shards), and `windward_finish_update` processes what is left and
drops the caches. The whole state is never staged: a bucket's memory goes once its layers are done.

Two ways in: `windward_receive(stream)`, where the worker iterates a transport's portable stream itself
(the collective / ipc / disk transports: the buckets come straight from the trainer into this process),
and `windward_load_bucket(bytes)` between begin and finish, one RPC per bucket, for the others. A session
that fails half way is still finished (no layer left on the meta device) and the error says the engine
then holds a mix of versions, which the next full sync repairs.

Never: imported by anything but vLLM's worker process (it relies on `self` being a vLLM Worker), and never
import the trainer side: a stream arrives pickled and is only iterated.
"""

from __future__ import annotations

import pickle
import time

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
        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self._windward_model())
        self._windward_updating = True

    def windward_load_bucket(self, data) -> int:
        """Load one bucket (bytes-like or a uint8 tensor) into the model; returns its tensor count."""
        from vllm.config import set_current_vllm_config

        if not getattr(self, "_windward_updating", False):
            raise RuntimeError("windward_load_bucket: no weight update in progress (call windward_begin_update)")
        named = unpack_bucket(data)
        with set_current_vllm_config(self.vllm_config):
            self._windward_model().load_weights(iter(named))
        return len(named)

    def windward_finish_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if not getattr(self, "_windward_updating", False):
            raise RuntimeError("windward_finish_update: no weight update in progress")
        self._windward_updating = False
        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self._windward_model(), self.vllm_config.model_config)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):  # as vLLM's reload_weights
            fn = getattr(self.model_runner, reset, None)
            if fn is not None:
                fn()

    def windward_receive(self, stream: bytes) -> dict:
        """Iterate a pickled portable bucket stream (`rl/weights`) in this process and load each bucket as
        it arrives. Returns {"buckets", "tensors", "bytes", "seconds"}."""
        stream = pickle.loads(stream)
        t0 = time.perf_counter()
        buckets = tensors = nbytes = 0
        self.windward_begin_update()
        try:
            for data in stream:
                tensors += self.windward_load_bucket(data)
                buckets += 1
                nbytes += len(data)
                del data  # the engine keeps views only while a layer waits for the rest of its shards
        except BaseException as err:
            self.windward_finish_update()
            raise RuntimeError(f"weight update failed after {buckets} bucket(s); the engine now holds a mix of "
                               f"the old and the new weights until the next full sync: {err!r}") from err
        self.windward_finish_update()
        return {"buckets": buckets, "tensors": tensors, "bytes": nbytes, "seconds": time.perf_counter() - t0}
