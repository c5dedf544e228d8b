"""Shared test settings."""

import warnings

import pytest
import torch as th

# One intra-op thread: the networks here are tiny, and on a shared 2-core CI machine torch's
# default thread pool makes every update several times slower without changing any result.
th.set_num_threads(1)


@pytest.fixture
def run_env_checker():
    """``run(check, env, expected_warnings)``: run an env checker (gymnasium's or SB3's) and fail on
    any warning whose message contains none of ``expected_warnings``."""

    def run(check, env, expected_warnings):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check(env)
        unexpected = [str(w.message) for w in caught if not any(s in str(w.message) for s in expected_warnings)]
        assert not unexpected, unexpected

    return run
