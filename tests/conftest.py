"""Shared test settings."""

import torch as th

# One intra-op thread: the networks here are tiny, and on a shared 2-core CI machine torch's
# default thread pool makes every update several times slower without changing any result.
th.set_num_threads(1)
