"""Names of what a run folder holds, and the pure rules about its records, apart from the code that writes them
(which imports torch): the HTTP API, which must start without torch, and the CLI's listing read them from here.
tests/test_search_store.py checks that SUBNETWORK_FILE matches supernet.extract's."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SEARCH_FILE, TRIALS_FILE, FRONT_FILE, PLOT_FILE = "search.json", "trials.jsonl", "front.json", "pareto.png"
REFINED_DIR = "refined"
COMPRESSED_DIR = "compressed"
SUBNETWORK_FILE = "subnetwork.json"  # = supernet.extract.SUBNETWORK_FILE, the record inside an exported folder


def serves_refined(point: Mapping[str, Any]) -> bool:
    """Whether exports and downloads of a front point serve its refined model: it was refined, and kept."""
    refined = point.get("refined")
    return isinstance(refined, Mapping) and bool(refined.get("kept", True))


def compression_key(settings: Mapping[str, Any], seed: int) -> str:
    """The name of one compression of a point (CompressConfig.to_dict() and the run's seed: what shapes the model,
    nothing else): its folder's, and what makes a repeated request the same one."""
    text = json.dumps(dict(settings) | {"seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compressed_folder(folder: str | Path, position: int, settings: Mapping[str, Any], seed: int) -> Path:
    """Where a compression of front point `position` lives in the run folder: compressed/<position>/<key>/."""
    return Path(folder) / COMPRESSED_DIR / str(int(position)) / compression_key(settings, seed)
