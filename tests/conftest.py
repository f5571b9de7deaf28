"""The fixtures shared by the tests. The helpers (the repository root, tiny_cfg, make_inputs,
load_script, the export tests' spread-weight model, ...) are in tests/helpers.py."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    yield
