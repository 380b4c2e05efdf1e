"""The suites turn the gpusoak plugin on: options parsed, node opened, journal started."""

import pytest

from gpusoak.plugin import enable


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    enable(config)
