"""Names of the search's objectives and optimizers, apart from the code that implements them (which imports torch,
pymoo and syne-tune): the settings models (search/settings.py), the CLI's help and the API's schema list them
without importing it. tests/test_settings.py checks that they match search.objectives.OBJECTIVES and
search.optimizers.OPTIMIZERS."""

OBJECTIVE_NAMES = ("error", "params", "macs", "latency")
OPTIMIZER_NAMES = ("nsga2", "morea", "random", "local", "ehvi")
