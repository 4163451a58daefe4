"""Service settings, read from `NASPRUNE_*` environment variables once at start.

Nothing here opens a database or touches the disk: the server, each worker process and the tests build their
engine from a `Settings` they hold, so importing the service never has side effects.

    NASPRUNE_DATA_ROOT=/srv/nasprune NASPRUNE_WORKERS=2 nasprune serve
    NASPRUNE_ALLOWED_MODEL_ROOTS='["/models", "/shared/hf"]'   # a JSON list ...
    NASPRUNE_ALLOWED_DATA_ROOTS=/data/a,/data/b                # ... or comma-separated paths
    NASPRUNE_AUTH=required                                     # bearer tokens even before one exists
    NASPRUNE_MAX_UPLOAD_BYTES=1073741824 NASPRUNE_MAX_BODY_BYTES=65536   # request size limits (HTTP 413)
    NASPRUNE_MAX_DATASET_BYTES_PER_OWNER=10737418240                    # stored datasets per token (HTTP 507)
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from supernet.confine import Policy

DATABASE_FILE = "nasprune.db"
SEARCHES_DIR = "searches"
DATASETS_DIR = "datasets"
SHARES_DIR = "shares"
LOG_FILE = "worker.log"  # each search's log, in its folder: what its jobs (search, refinements, exports) logged
MIB = 1024 * 1024


class Settings(BaseSettings):
    """Everything the server and workers need to agree on: where data lives, which database, which paths a
    request may name, how many workers, and the timings of the heartbeat / stale-job recovery."""

    model_config = SettingsConfigDict(env_prefix="NASPRUNE_", extra="ignore", validate_default=True)

    data_root: Path = Path("nasprune-data")
    # None: sqlite:///<data_root>/nasprune.db (filled in after validation, so it follows NASPRUNE_DATA_ROOT)
    database_url: str | None = None
    # Folders a request may name as a model or a dataset; files under data_root come in only through uploads.
    allowed_model_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    allowed_data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        1, description="worker processes started by `nasprune serve`; 0 = API only; auto: one per visible GPU, "
                       "each pinned to its own (one CPU worker where there is none)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    heartbeat_s: float = Field(10.0, gt=0, description="how often a worker stamps its job as alive")
    stale_after_s: float = Field(60.0, gt=0, description="a running job silent this long is taken back")
    max_attempts: int = Field(3, ge=1, description="runs a job gets before a lost worker fails it")
    # auto: the API needs a bearer token once `nasprune token create` has made one (open on a fresh install,
    # closed for good after: revoking the last token does not reopen it); required: it always needs one, and
    # refuses everything but /healthz and the docs until one exists.
    auth: Literal["auto", "required"] = "auto"
    # Request size limits (HTTP 413 past them): a dataset file uploaded to POST /datasets, any other request body.
    max_upload_bytes: int = Field(200 * MIB, ge=1, description="largest dataset file POST /datasets accepts")
    max_body_bytes: int = Field(MIB, ge=1, description="largest request body of the other routes")
    min_free_mb: int = Field(500, ge=0, description="free disk space under data_root that the server and workers "
                                                    "need to start, a worker needs to take a job, and an upload "
                                                    "must leave (HTTP 507)")
    # The sum of one token's stored datasets (HTTP 507 past it): one client cannot fill the disk the others share.
    max_dataset_bytes_per_owner: int = Field(10 * 1024 * MIB, ge=1, description="largest total size of the "
                                             "datasets one token (or, without tokens, everyone) may store")
    # A download whose archive is not built yet queues an export job and waits this long for a worker to build it;
    # past it, the route answers 202 with Retry-After and the job's status.
    export_wait_s: float = Field(120.0, ge=0, le=3600, description="seconds a download waits for its export job")
    # Who runs the queued jobs: `local`, the worker processes `nasprune serve` starts (and any `nasprune worker`);
    # `ray`, one Ray job per queued job, submitted by `nasprune serve` to the Ray cluster at ray_address
    # (service/executors.py). The database is the store of record either way.
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = Field(None, description="the Ray job server's address, e.g. http://127.0.0.1:8265")
    ray_worker_command: str = Field("nasprune", min_length=1,
                                    description="how a Ray job starts nasprune on a cluster node (e.g. `python -m "
                                                "service.cli`); the node needs the package and the data root")
    ray_num_cpus: float = Field(2.0, gt=0, description="CPUs a Ray job asks for (a job that wants a GPU gets one too)")
    ray_memory_mb: int = Field(4096, ge=0, description="memory a search or refinement's Ray job reserves (0: none)")

    @field_validator("allowed_model_roots", "allowed_data_roots", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        """Accept a JSON list or comma-separated paths from the environment (NoDecode skips JSON-only parsing)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        # Absolute paths: worker processes may start in another working directory and must find the same files.
        self.data_root = self.data_root.expanduser().resolve()
        self.allowed_model_roots = [p.expanduser().resolve() for p in self.allowed_model_roots]
        self.allowed_data_roots = [p.expanduser().resolve() for p in self.allowed_data_roots]
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_root / DATABASE_FILE}"
        if self.executor == "ray" and not self.ray_address:
            raise ValueError("executor ray needs ray_address (NASPRUNE_RAY_ADDRESS), e.g. http://127.0.0.1:8265")
        if self.stale_after_s <= self.heartbeat_s:
            raise ValueError(f"stale_after_s ({self.stale_after_s}) must exceed heartbeat_s ({self.heartbeat_s}), "
                             "or live jobs would be taken from their workers; a few heartbeats is a good margin")
        return self

    @property
    def url(self) -> str:
        """The database URL (never None after validation; typed as str for callers)."""
        if self.database_url is None:  # unreachable: _resolve fills it in
            raise RuntimeError("settings were not validated")
        return self.database_url

    @property
    def model_roots(self) -> list[Path]:
        """The folders a request may name a model folder in. Never the data root: what lies there (searches,
        exports, uploads) belongs to the users who made it, and reaches others only through its routes."""
        return _unique(self.allowed_model_roots)

    @property
    def data_roots(self) -> list[Path]:
        """The folders a request may name data files or a GLUE folder in (never the data root, as above)."""
        return _unique(self.allowed_data_roots)

    @property
    def read_policy(self) -> Policy:
        """What a worker may read on a user's behalf (supernet.confine): the allowed roots, plus the uploaded
        datasets and the shared models (POST /shares), which a request names by id and the API checks against the
        caller before it names their folder."""
        return Policy.of([*self.model_roots, self.shares_root], [*self.data_roots, self.datasets_root])

    @property
    def searches_root(self) -> Path:
        return self.data_root / SEARCHES_DIR

    def search_folder(self, search_id: str) -> Path:
        """The run folder of one search (supernet checkpoints, refined models, exports, its log)."""
        return self.searches_root / search_id

    @property
    def shares_root(self) -> Path:
        """Where the share jobs work (<key>/teacher, work, model): service/shares.py."""
        return self.data_root / SHARES_DIR

    @property
    def datasets_root(self) -> Path:
        return self.data_root / DATASETS_DIR

    def dataset_folder(self, dataset_id: str) -> Path:
        """The folder of one uploaded dataset (the file, under a name the server chose)."""
        return self.datasets_root / dataset_id


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use (`get_settings.cache_clear()` re-reads)."""
    return Settings()
