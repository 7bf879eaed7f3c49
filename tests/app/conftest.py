"""What the page tests share: one cache folder per test module (the demo model trains once
in it, and runs are shared on purpose)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def app_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("app-cache")
