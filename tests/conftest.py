"""pytest configuration shared by the test suite."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # End-to-end tests start real daemons (exporter, prometheus, prometheus-alertmanager) on loopback.
    # Deselect with `-m "not e2e"`; CAFFE_EXPORTER_SKIP_E2E=1 skips them (tests/e2e_util.py, E2E_MARKS).
    config.addinivalue_line("markers", "e2e: end-to-end test starting real daemons on 127.0.0.1")
