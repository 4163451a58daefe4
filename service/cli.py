"""`nasprune` command line: the same pipeline as the service, run locally.

    nasprune search --model minilm --task glue/rte --data-dir ../shared/data/glue --objectives error,params,latency \
                    --optimizer nsga2 --evaluations 100 [--refine-epochs 1] --out runs/rte
    nasprune train  --model minilm --task glue/rte --data-dir ../shared/data/glue --out runs/rte
    nasprune refine --run runs/rte --point 0 3 [--epochs 1]     # fine-tune chosen front points at their own size
    nasprune compress --run runs/rte --point 0 --rank 64 --bank 12 [--protocol tucker] --out runs/rte/tiny
    nasprune share --model minilm --task glue/sst2 --groups 1 --out runs/sst2-shared   # then --model .../model
    nasprune export --run runs/rte --point 0 --out runs/rte/point-0 [--format hf|onnx] [--sliced]
    nasprune export --run runs/rte --config middle --out runs/rte/export-middle

The service (settings from NASPRUNE_* variables, see service/config.py):
    nasprune db upgrade                   # bring the database schema up to date
    nasprune serve [--workers N]          # db upgrade, N worker processes and the HTTP API (docs at /docs)
    nasprune worker [--once]              # one more worker process (on this or another machine)
    nasprune token create NAME            # an API token (printed once); from then on the API needs one
    nasprune token list | revoke NAME
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from search.settings import SearchSettings
from service.flags import FlagValueError, add_flags, model_flags, parse_flags
from supernet.config import ConfigError, SubNetworkConfig
from supernet.hardware import DeviceUnavailable, check_device
from supernet.settings import CompressConfig, Compute, RefinePointConfig, RunSpec, ShareSpec

if TYPE_CHECKING:
    from supernet.run import Run

# Only torch-free modules above: `nasprune --help`, `db upgrade` and `token` start without torch, transformers or
# datasets (several seconds); each command imports what it runs.

log = logging.getLogger("nasprune")


def _add_settings(p: argparse.ArgumentParser, model: type[BaseModel], *, compute: bool = False,
                  **options: Any) -> None:
    """The flags of `model`'s fields (service/flags.py), grouped by section; main() parses them back into it.
    `compute`: also --device and --precision (supernet.settings.Compute), for the stages that train or evaluate."""
    flags = model_flags(model, **options)
    groups: dict[str, Any] = {}
    for flag in flags:
        title = flag.path[0] if len(flag.path) > 1 else "settings"
        if title not in groups:
            section = "" if title == "settings" else f".{title}"
            groups[title] = p.add_argument_group(f"{title} ({model.__name__}{section})")
        add_flags(groups[title], [flag])
    compute_flags = model_flags(Compute) if compute else []
    if compute_flags:
        add_flags(p.add_argument_group("compute (Compute): where it runs"), compute_flags)
    p.set_defaults(settings_model=model, settings_flags=flags, compute_flags=compute_flags)


def _parse_settings(args: argparse.Namespace) -> None:
    """args.settings: the command's settings model, from the flags given (defaults are the model's)."""
    model = getattr(args, "settings_model", None)
    if model is None:
        return
    data: dict[str, Any] = {}
    task = getattr(args, "settings__task", RunSpec.model_fields["task"].default)
    custom = [f.name for f in args.settings_flags if f.path[0] == "custom" and hasattr(args, f.dest)]
    if "custom" in model.model_fields and task.startswith("custom/"):
        data["custom"] = {}  # a custom task's files are required: a missing one is named by its flag
    elif custom:
        raise FlagValueError(f"{', '.join(custom)} describe a custom task: give --task custom/<name> too")
    args.settings = parse_flags(model, args.settings_flags, args, **data)
    args.compute = parse_flags(Compute, args.compute_flags, args) if args.compute_flags else None
    if args.compute is not None:
        try:  # a GPU asked for where there is none: refused now, not after the data is loaded
            check_device(args.compute.device)
        except DeviceUnavailable as exc:
            raise FlagValueError(f"--device: {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from supernet.run import train_run

    spec: RunSpec = args.settings
    start = time.perf_counter()
    with _signal_flags() as flags:
        state = train_run(spec, args.out, should_stop=lambda: flags["stop"],
                          should_checkpoint=flags["take_checkpoint"], compute=args.compute)
    if state.stopped:
        print(f"stopped at step {state.step}/{state.total_steps}; rerun the same command to resume")
        return 130
    summary = json.loads((Path(args.out) / "training.json").read_text())
    print(f"trained in {time.perf_counter() - start:.0f} s; validation metrics:")
    for name, metrics in summary["validation"].items():
        print(f"  {name:9s} " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print("  majority  " + ", ".join(f"{k}={v:.4f}" for k, v in summary["majority_baseline"].items()))
    return 0


@contextmanager
def _signal_flags() -> Iterator[dict]:
    """Ctrl-C / SIGTERM: finish the step, checkpoint and stop. SIGUSR1: checkpoint and go on.
    The previous handlers come back afterwards."""
    flags: dict = {"stop": False, "checkpoint": False}

    def stop(*_: object) -> None:
        flags["stop"] = True
        log.warning("interrupted: finishing the current step and writing a checkpoint")

    def checkpoint(*_: object) -> None:  # `kill -USR1 <pid>` asks for a checkpoint without stopping
        flags["checkpoint"] = True

    def take_checkpoint_flag() -> bool:
        requested, flags["checkpoint"] = flags["checkpoint"], False
        return requested

    flags["take_checkpoint"] = take_checkpoint_flag
    handlers = {signal.SIGINT: stop, signal.SIGTERM: stop, signal.SIGUSR1: checkpoint}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield flags
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_search(args: argparse.Namespace) -> int:
    from search.job import run_search_job
    from search.records import FRONT_FILE
    from search.report import front_table

    spec, job = args.settings.split()
    start = time.perf_counter()
    with _signal_flags() as flags:
        result = run_search_job(spec, job, args.out, should_stop=lambda: flags["stop"], compute=args.compute)
    if result is None:
        print("stopped; rerun the same command to resume")
        return 130
    front = json.loads((Path(args.out) / FRONT_FILE).read_text())
    alongside = len(result.trials) - result.evaluations
    print(f"search done in {time.perf_counter() - start:.0f} s: {result.evaluations} sub-networks evaluated"
          + (f" ({alongside} more scored from their passes: the other exit thresholds)" if alongside else "")
          + f", {len(front['points'])} on the front, hypervolume {result.hypervolume:.4f}")
    print(front_table(front))
    print(f"  files: {args.out}/front.json, trials.jsonl, pareto.png; export a point with "
          f"`nasprune export --run {args.out} --point K --out DIR` (refine it first with `nasprune refine`)")
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    from search.job import refine_points
    from search.report import front_table

    config = args.settings.config()
    start = time.perf_counter()
    with _signal_flags() as flags:
        front = refine_points(args.run, args.point, config, should_stop=lambda: flags["stop"], compute=args.compute)
    if front is None:
        print("stopped; rerun the same command to refine the points not done yet")
        return 130
    print(f"refined {len(args.point)} point(s) in {time.perf_counter() - start:.0f} s")
    print(front_table(front, args.point))
    print(f"  `nasprune export --run {args.run} --point K --out DIR` exports a refined point's model if it was kept")
    return 0


def _print_beside(metrics: dict, before: dict, name: str) -> None:
    """Each split's metrics, each beside the model it came from (`name`)'s where that has it."""
    for split, values in metrics.items():
        was = before.get(split) or {}
        print(f"  {split}: " + ", ".join(f"{k}={v:.4f}" + (f" ({name} {was[k]:.4f})" if k in was else "")
                                         for k, v in values.items()))


def cmd_compress(args: argparse.Namespace) -> int:
    from search.compression import compress_point, export_compressed

    start = time.perf_counter()
    with _signal_flags() as flags:
        record = compress_point(args.run, args.point, args.settings, should_stop=lambda: flags["stop"],
                                compute=args.compute)
    if record is None:
        print("stopped; rerun the same command to resume the recovery where it stopped")
        return 130
    out = export_compressed(args.run, record, args.out)
    params, point = record["params"], record["point_params"]
    print(f"compressed point {args.point} ({record['compression']['protocol']}, rank {record['compression']['rank']})"
          f" in {time.perf_counter() - start:.0f} s to {out}")
    print(f"  params: {params['total']:,} ({params['encoder']:,} in the encoder; the point: {point['total']:,}, "
          f"{point['encoder']:,})")
    _print_beside(record["metrics"], record["point_metrics"], "point")
    return 0


def cmd_share(args: argparse.Namespace) -> int:
    from supernet.share import MODEL_DIR, share_run

    start = time.perf_counter()
    with _signal_flags() as flags:
        record = share_run(args.settings, args.out, should_stop=lambda: flags["stop"], compute=args.compute)
    if record is None:
        print("stopped; rerun the same command to resume where it stopped")
        return 130
    params, teacher = record["params"], record["teacher_params"]
    print(f"shared {len(record['tying']['sources'])} block(s) in {time.perf_counter() - start:.0f} s: "
          f"{Path(args.out) / MODEL_DIR} (a model folder for --model)")
    print(f"  params: {params['total']:,} ({params['encoder']:,} in the encoder; unshared: {teacher['total']:,}, "
          f"{teacher['encoder']:,}); blocks from layers {record['tying']['sources']}")
    _print_beside(record["metrics"], record["teacher_metrics"], "unshared")
    for steps, values in record["validation_by_ode_steps"].items():
        print(f"  validation at {steps} ODE steps: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
    return 0


def _parse_sub(text: str, run: Run, config) -> SubNetworkConfig:
    space = run.space(config)
    if text in ("smallest", "middle", "largest"):
        return getattr(space, text)()
    path = Path(text)
    raw = path.read_text() if path.is_file() else text
    try:
        return SubNetworkConfig.from_json(raw).validate(config)
    except json.JSONDecodeError:
        raise ConfigError(
            f"--config must be smallest, middle, largest, a JSON object or a JSON file, not {text!r}"
        ) from None


def cmd_export(args: argparse.Namespace) -> int:
    from search.records import FRONT_FILE, REFINED_DIR, serves_refined
    from supernet.evaluation import evaluate
    from supernet.extract import SUBNETWORK_FILE, export_onnx, export_subnetwork, load_exported, save_folder
    from supernet.run import Run

    run = Run(args.run)
    supernet = run.load_supernet()
    refined_folder = None
    if args.point is not None:
        front_file = Path(args.run) / FRONT_FILE
        if not front_file.is_file():
            raise FileNotFoundError(f"{front_file}: no front here; run `nasprune search` first")
        points = json.loads(front_file.read_text())["points"]
        if not 0 <= args.point < len(points):
            raise ConfigError(f"--point must be between 0 and {len(points) - 1}, got {args.point}")
        sub = SubNetworkConfig.from_dict(points[args.point]["config"]).validate(supernet.config)
        if serves_refined(points[args.point]) and not args.sliced:
            refined_folder = Path(args.run) / REFINED_DIR / str(args.point)
    else:
        sub = _parse_sub(args.config, run, supernet.config)
    validation = run.batches("validation")
    spec = run.task.spec
    sliced = evaluate(supernet, validation, spec, sub=sub, progress=True)
    if refined_folder is not None:  # the point's refined model (search --refine-epochs), not the supernet slice
        record = json.loads((refined_folder / SUBNETWORK_FILE).read_text())
        out = save_folder(load_exported(refined_folder), args.out, tokenizer=run.tokenizer, record=record)
    else:
        out = export_subnetwork(supernet, sub, args.out, tokenizer=run.tokenizer, seq_len=run.spec.max_length,
                                metrics={"validation": sliced}, token_lengths=run.token_lengths(sub))
    exported = evaluate(load_exported(out), validation, spec, progress=True)
    print(f"exported {sub.to_json()}{' (refined)' if refined_folder else ''} to {out}")
    print("  validation, sliced in the supernet: " + ", ".join(f"{k}={v:.4f}" for k, v in sliced.items()))
    print("  validation, exported model:         " + ", ".join(f"{k}={v:.4f}" for k, v in exported.items()))
    if args.format == "onnx":
        path = export_onnx(load_exported(out), Path(out) / "model.onnx", seq_len=run.spec.max_length)
        print(f"  ONNX: {path}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.db import upgrade
    from service.startup import check_startup, private_files

    settings = get_settings()
    private_files(settings)  # first: a data root made by the check below is 0700 too
    check_startup(settings)
    upgrade(settings.url, args.revision)
    print(f"database {settings.url} is at revision {args.revision}")
    return 0


@contextmanager
def _token_session() -> Iterator[tuple[Any, Any]]:
    """(settings, session) on the service database, brought up to date first (as `serve` does)."""
    from service.config import get_settings
    from service.db import make_engine, session_factory, upgrade
    from service.startup import private_files

    settings = get_settings()
    private_files(settings)  # the database holds the tokens' hashes: never readable by other users
    upgrade(settings.url)
    engine = make_engine(settings.url)
    try:
        with session_factory(engine)() as session:
            yield settings, session
    finally:
        engine.dispose()


def _stamp(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


def cmd_token(args: argparse.Namespace) -> int:
    from service import tokens
    from service.repository import RepositoryError

    with _token_session() as (settings, session):
        try:
            if args.token_command == "create":
                row, token = tokens.create_token(session, args.name)
                session.commit()
                print(token)  # alone on stdout, so `TOKEN=$(nasprune token create ci)` works
                print(f"created token {row.name!r}: the line above is the token, shown this once (only its hash is "
                      "stored). Send it as `Authorization: Bearer <token>`; the web page asks for it. "
                      + ("The API now needs a token on every route but /healthz and the docs."
                         if settings.auth == "auto" else ""), file=sys.stderr)
            elif args.token_command == "list":
                rows = tokens.list_tokens(session)
                if not rows:
                    print(f"no tokens (NASPRUNE_AUTH={settings.auth}: "
                          + ("the API is open to anyone)" if settings.auth == "auto" else "the API refuses requests)"))
                    return 0
                width = max(len("name"), *(len(r.name) for r in rows))
                print(f"{'name':<{width}}  {'created':<20}  {'last used':<20}  status")
                for r in rows:
                    state = f"revoked {_stamp(r.revoked_at)}" if r.revoked_at else "active"
                    print(f"{r.name:<{width}}  {_stamp(r.created_at):<20}  {_stamp(r.last_used_at):<20}  {state}")
            else:
                row = tokens.revoke_token(session, args.name)
                session.commit()
                print(f"token {row.name!r} revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
                if not tokens.active_tokens_exist(session):
                    print("warning: no active token is left: the API refuses every call until "
                          "`nasprune token create NAME` makes a new one", file=sys.stderr)
        except RepositoryError as exc:
            print(f"nasprune: error: {exc}", file=sys.stderr)
            return 2
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run jobs until SIGTERM / Ctrl-C; the job in progress stops at its next step and goes back to the queue."""
    from service.config import get_settings
    from service.startup import check_startup, private_files
    from service.worker import run_worker

    settings = get_settings()
    private_files(settings)  # checkpoints, exports and logs: 0600 / 0700 (first: the data root too, if made here)
    check_startup(settings)
    shutdown = threading.Event()

    def stop(*_: object) -> None:
        log.warning("worker: stopping (the job in progress is checkpointed and requeued)")
        shutdown.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        only = None
        if args.job:
            kind, _, job_id = args.job.partition(":")
            only = (kind, job_id)
        run_worker(settings, worker_id=args.worker_id, once=args.once or only is not None, poll_s=args.poll,
                   shutdown=shutdown, only=only)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """db upgrade, start `--workers` worker processes, serve the API; the workers stop when the server does."""
    import uvicorn

    from service.api import create_app
    from service.config import get_settings
    from service.db import upgrade
    from service.startup import check_startup, private_files
    from service.supervisor import WorkerPool, worker_slots

    settings = get_settings()
    slots = worker_slots(settings.workers if args.workers is None else args.workers)
    workers = len(slots)
    host = args.host or settings.host
    port = args.port or settings.port
    private_files(settings)  # the data root, database, uploads, checkpoints, exports, logs: 0600 / 0700 (workers
    # inherit the umask)
    check_startup(settings)  # before any worker starts: a worker that cannot start is not started at all
    upgrade(settings.url)
    env = os.environ | {"NASPRUNE_DATA_ROOT": str(settings.data_root), "NASPRUNE_DATABASE_URL": settings.url}
    command = [sys.executable, "-m", "service.cli"] + (["-v"] if args.verbose else []) + ["worker"]
    dispatch = None
    if settings.executor == "ray":  # the cluster runs the jobs: no local workers unless asked for with --workers
        from service.db import make_engine, session_factory
        from service.executors import DispatchLoop, RayDispatcher, ray_client

        slots = worker_slots(args.workers or 0)
        workers = len(slots)
        dispatch = DispatchLoop(RayDispatcher(settings, session_factory(make_engine(settings.url)),
                                              ray_client(settings)))
        dispatch.start()
        log.warning("submitting queued jobs to the Ray cluster at %s", settings.ray_address)
    # restarts a worker that dies, unless it dies at startup
    pool = WorkerPool(command, env, workers, slots=slots).start()
    log.warning("serving on http://%s:%d with %d worker process(es); data root %s", host, port, workers,
                settings.data_root)

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    # uvicorn handles SIGINT/SIGTERM itself, then restores these handlers and raises the signal again: they turn
    # it into SystemExit, so the `finally` below stops the workers instead of leaving them orphaned.
    previous = {sig: signal.signal(sig, leave) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info" if args.verbose else "warning")
    except SystemExit as exc:
        code = exc.code
        reason = signal.Signals(code - 128).name if isinstance(code, int) and 128 < code < 128 + 65 else code
        log.warning("server stopped (%s); stopping the workers", reason)
    finally:
        if dispatch is not None:
            dispatch.stop()
        pool.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"a number of workers (0 or more) or auto, not {text!r}")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nasprune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    search = sub.add_parser("search", help="train the supernet, then search for the Pareto front of sub-networks")
    _add_settings(search, SearchSettings, compute=True)
    search.add_argument("--out", required=True, help="run folder (rerun with the same folder to resume)")
    search.set_defaults(func=cmd_search)
    train = sub.add_parser("train", help="fine-tune the weight-sharing supernet of a model on a task")
    _add_settings(train, RunSpec, compute=True)
    train.add_argument("--out", required=True, help="run folder (rerun with the same folder to resume)")
    train.set_defaults(func=cmd_train)
    refine = sub.add_parser("refine", help="fine-tune chosen front points of a search at their own size (on demand)")
    refine.add_argument("--run", required=True, help="run folder written by `nasprune search`")
    refine.add_argument("--point", type=int, nargs="+", required=True, help="indices of points in front.json")
    _add_settings(refine, RefinePointConfig, compute=True)
    refine.set_defaults(func=cmd_refine)
    compress = sub.add_parser("compress", help="decompose a front point's weights (Tucker matrix bank or low rank) and "
                                               "recover them by distillation: extreme compression")
    compress.add_argument("--run", required=True, help="run folder written by `nasprune search`")
    compress.add_argument("--point", type=int, required=True, help="index of a point in front.json")
    compress.add_argument("--out", required=True, help="where the compressed model folder is written")
    _add_settings(compress, CompressConfig, compute=True)
    compress.set_defaults(func=cmd_compress)
    share = sub.add_parser("share", help="tie an unshared model's layers into shared blocks and recover them by "
                                         "distillation: a parameter-shared model whose stack runs as an ODE")
    _add_settings(share, ShareSpec, compute=True, skip=("space", "importance", "importance_batches", "training"))
    share.add_argument("--out", required=True, help="folder of the run (rerun with it to resume); the model is "
                                                    "written to <out>/model")
    share.set_defaults(func=cmd_share)
    export = sub.add_parser("export", help="export a sub-network of a trained run as a smaller model")
    export.add_argument("--run", required=True, help="run folder written by `nasprune train`")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--point", type=int, help="index of a point in the run's front.json")
    which.add_argument("--config", help="smallest | middle | largest | a SubNetworkConfig as JSON or a JSON file")
    export.add_argument("--out", required=True, help="folder for the exported model")
    export.add_argument("--format", choices=["hf", "onnx"], default="hf")
    export.add_argument("--sliced", action="store_true",
                        help="with --point: export the supernet's slice even if the point was refined")
    export.set_defaults(func=cmd_export)
    serve = sub.add_parser("serve", help="the HTTP API and its worker processes (settings: NASPRUNE_* variables)")
    serve.add_argument("--host", default=None, help="default $NASPRUNE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default $NASPRUNE_PORT or 8000")
    serve.add_argument("--workers", type=_workers, default=None,
                       help="worker processes, or auto: one per visible GPU, each pinned to its own (one CPU worker "
                            "where there is none); default $NASPRUNE_WORKERS or 1")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="a worker process: claim queued searches and run them")
    worker.add_argument("--once", action="store_true", help="run at most one job, then exit")
    worker.add_argument("--poll", type=float, default=1.0, help="seconds between looks at an empty queue")
    worker.add_argument("--worker-id", default=None, help="default host:pid:random")
    worker.add_argument("--job", default=None, metavar="KIND:ID",
                        help="run only this job (search:ID, refinement:ID, compression:ID, share:ID or export:ID) if "
                             "it is still queued, then exit: what each Ray job runs (NASPRUNE_EXECUTOR=ray)")
    worker.set_defaults(func=cmd_worker)
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_upgrade = db_sub.add_parser("upgrade", help="apply the migrations (creates a new SQLite file)")
    db_upgrade.add_argument("--revision", default="head")
    db_upgrade.set_defaults(func=cmd_db_upgrade)
    token = sub.add_parser("token", help="API tokens: once one exists, the API needs one (settings: NASPRUNE_*)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it (the only time it is shown)")
    create.add_argument("name", help="who or what holds it, e.g. alice or ci (unique, never reused)")
    token_sub.add_parser("list", help="the tokens: name, created, last used, revoked (never the token itself)")
    revoke = token_sub.add_parser("revoke", help="revoke a token at once (its searches stay in the database)")
    revoke.add_argument("name")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _parse_settings(args)
    except FlagValueError as exc:  # a value the settings refuse, named by its flag
        print(f"nasprune: error: {exc}", file=sys.stderr)
        return 2
    service = args.command in ("serve", "worker", "db")  # long-running services log what they do
    logging.basicConfig(level=logging.INFO if args.verbose or service else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # transformers' load reports (e.g. "classifier: MISSING", expected) are noise here
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
        if "transformers" in sys.modules:  # already imported (main called in-process, as the tests do)
            sys.modules["transformers"].logging.set_verbosity_error()
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # "setup plugin ..." at import
    from pydantic import ValidationError

    from service.startup import StartupError

    umask = os.umask(0o077)  # read it back: the service commands make it private; main() called in-process
    os.umask(umask)  # (the tests) gets its own again when the command returns
    try:
        return args.func(args)
    except ValidationError as exc:  # a NASPRUNE_* variable that does not parse: one line per bad setting
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"nasprune: error: invalid settings (NASPRUNE_* variables): {problems}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, StartupError) as exc:  # DataError, ConfigError, ExportError ... too
        print(f"nasprune: error: {exc}", file=sys.stderr)
        return 2
    finally:
        os.umask(umask)


if __name__ == "__main__":
    sys.exit(main())
