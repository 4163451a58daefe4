"""Names of the search's objectives, apart from the code that measures them (which imports torch): the CLI's
help lists them without importing it. tests/test_cli.py checks that they match search.objectives.OBJECTIVES."""

OBJECTIVE_NAMES = ("error", "params", "macs", "latency")
