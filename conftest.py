"""Top-level conftest: the fixtures that hand suites a node, its GPUs and the soak."""

pytest_plugins = ["fixtures.soak"]
