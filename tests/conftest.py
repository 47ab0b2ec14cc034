"""Suite-wide collection rules: with pytest-xdist (`scripts/test.sh` runs `-n 2 --dist loadgroup`), every real vLLM
test runs on one worker, one after another: each engine binds CPUs and sizes its KV cache as if it had the machine."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("vllm") is not None:
            item.add_marker(pytest.mark.xdist_group("vllm"))
