"""Fixtures shared by the kp3d tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test on one torch thread (tiny models; see tests/conftest.py), restoring the
    count afterwards in case a test changed it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
