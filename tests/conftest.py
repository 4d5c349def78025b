"""Suite-wide switch: ``MDP_HUB_TEST_THREADS=N`` forces ``torch.set_num_threads(N)`` in the test process, so the
suite can be checked on one thread (set ``OMP_NUM_THREADS=N`` too for the subprocesses the tests start)."""

import os

import torch

if os.environ.get("MDP_HUB_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["MDP_HUB_TEST_THREADS"]))
