"""Names of the search's objectives and optimizers, apart from the code that implements them (which imports torch,
pymoo and syne-tune): the settings models (search/settings.py), the CLI's help and the API's schema list them
without importing it. tests/test_settings.py checks that they match search.objectives.OBJECTIVES and
search.optimizers.OPTIMIZERS."""

import importlib.util

OBJECTIVE_NAMES = ("error", "params", "macs", "latency", "expected_macs")
OPTIMIZER_NAMES = ("nsga2", "morea", "random", "local", "ehvi")


def botorch_available() -> bool:
    """Whether the optional EHVI dependencies (botorch, gpytorch) can be imported: asked without importing them
    (or torch), so the API can refuse an "ehvi" search that no worker could run."""
    return all(importlib.util.find_spec(name) is not None for name in ("botorch", "gpytorch"))
