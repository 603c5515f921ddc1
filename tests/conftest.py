"""pytest configuration shared by the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

import exporter

TREE = Path(__file__).resolve().parent.parent / "exporter"


def pytest_configure(config: pytest.Config) -> None:
    """The suite tests this checkout: an installed copy shadowing it would pass or fail for the wrong code
    (pyproject.toml puts the checkout first on sys.path; this says so loudly if something else won)."""
    found = Path(exporter.__file__).resolve().parent
    if found != TREE:
        raise pytest.UsageError(f"tests import exporter from {found}, not from this checkout ({TREE}); "
                                f"run pytest from the checkout's root")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.prom from the current exporter output instead of comparing with them",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when pytest runs with --update-golden (tests/test_collector.py)."""
    return bool(request.config.getoption("--update-golden"))
