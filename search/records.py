"""Names of what a run folder holds, and the pure rules about its records, apart from the code that writes them
(which imports torch): the HTTP API, which must start without torch, and the CLI's listing read them from here.
tests/test_search_store.py checks that SUBNETWORK_FILE matches supernet.extract's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SEARCH_FILE, TRIALS_FILE, FRONT_FILE, PLOT_FILE = "search.json", "trials.jsonl", "front.json", "pareto.png"
REFINED_DIR = "refined"
SUBNETWORK_FILE = "subnetwork.json"  # = supernet.extract.SUBNETWORK_FILE, the record inside an exported folder


def serves_refined(point: Mapping[str, Any]) -> bool:
    """Whether exports and downloads of a front point serve its refined model: it was refined, and kept."""
    refined = point.get("refined")
    return isinstance(refined, Mapping) and bool(refined.get("kept", True))
