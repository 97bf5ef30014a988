import os

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny test models run far faster on one thread than two on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
