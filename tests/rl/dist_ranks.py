"""What the 2-rank gloo tests (test_backends.py, test_vision_trainer.py) do at the start and end of a rank."""

import faulthandler
import os
import sys

import torch


def start_rank() -> None:
    faulthandler.enable()  # a native abort in a rank prints its Python stack
    torch.set_num_threads(1)
    os.environ["DS_ACCELERATOR"] = "cpu"


def leave_rank() -> None:
    """Leave without interpreter finalization: a gloo worker thread still holding a tensor at that point aborts
    the rank (SIGABRT, "terminate called without an active exception"; seen once in ~50 runs of
    test_vision_trainer.py; pytorch/pytorch#179291 describes the mechanism). Results are saved before this."""
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
