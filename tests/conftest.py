"""Test-session set-up shared by every test module.

The embedding cache goes to one temporary folder per test session, so a test run
never reads a cache a developer's earlier run left behind, and everything is offline.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_SESSION_CACHE = tempfile.mkdtemp(prefix="recsim_mm_test_cache_")
os.environ["RECSIM_MM_CACHE"] = _SESSION_CACHE
