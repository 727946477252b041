"""Test-session set-up shared by every test module.

The embedding cache goes to one temporary folder per test session, so a test run
never reads a cache a developer's earlier run left behind, and everything is offline.
Under pytest-xdist (`make test` runs ``-n auto``) the workers share the controller's
folder (they inherit its environment), so each catalog is encoded once per session; the
cache's file lock keeps concurrent writers apart.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("RECSIM_MM_TEST_SESSION_CACHE"):
    _SESSION_CACHE = os.environ["RECSIM_MM_TEST_SESSION_CACHE"]  # an xdist worker: the controller's folder
else:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="recsim_mm_test_cache_")
    os.environ["RECSIM_MM_TEST_SESSION_CACHE"] = _SESSION_CACHE
os.environ["RECSIM_MM_CACHE"] = _SESSION_CACHE

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread per test: the tests' tensors are tiny, so threads add barriers
    and no speed, and test processes often run beside other jobs; results do not
    depend on the thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
