"""GPU figures (issue 35), measured side by side in one run on one CUDA GPU, medians of repeated timings.

1. `job`: the default job (`nasprune search` with its defaults: supernet training, importance, NSGA-II search,
   test re-evaluation) on SST-2 with 20k training sentences, against plain fine-tuning of the full model for the
   same epochs on the same GPU (`nasprune train --num-random-subnets 0`). Target: job <= 2x fine-tuning.
2. `slicing`: forward time of sliced sub-networks (the supernet running a smaller slice) and of their exported
   (physically smaller) models against their share of the full model's MACs, at batch 1, 32 and 256 x 128 tokens:
   where a GPU's kernel-launch floor stops smaller widths from paying. Batch 1 is also timed replayed from a CUDA
   graph (one launch for the whole forward), which removes that floor.
3. `latency`: the latency model on the GPU: a block table calibrated on it (32 x 128) predicts the exported front
   points and random sub-networks, each measured as an exported model; Spearman's rho (target >= 0.9) and MAPE.
4. `graphs`: exported models (the job's front points and the full network) on real SST-2 dev sentences with dynamic
   padding at batch 1 and 32, eager against `model.use_cuda_graphs()`.
5. `compile`: torch.compile (reduce-overhead) of the full network at batch 1 on such a stream, with its compile time.

Each part appends its figures to --out (JSON) as soon as it is done, so a run cut short keeps what it measured.

    python bench/gpu.py --model MODEL_DIR --glue-dir ../shared/data/glue --work /tmp/gpu --out gpu.json
    python bench/gpu.py --tiny --work /tmp/gpu --out gpu.json    # the tiny random model: seconds, any device
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from search.latency import (  # noqa: E402
    agreement,
    load_or_calibrate,
    random_subnetworks,
    time_calls,
    validate,
)
from supernet.config import SubNetworkConfig  # noqa: E402
from supernet.counting import count_macs  # noqa: E402
from supernet.devices import describe, resolve_device  # noqa: E402
from supernet.extract import extract  # noqa: E402
from supernet.run import load_supernet  # noqa: E402


def write(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


def nasprune(*args: str) -> float:
    """Seconds a `nasprune` command takes (it must succeed)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "service.cli", *args], check=True, cwd=HERE.parent)
    return time.perf_counter() - started


def job_vs_finetuning(args: argparse.Namespace, device: str) -> dict:
    data = ["--model", args.model, "--task", args.task, "--data-dir", str(args.glue_dir), "--device", device]
    if args.train_limit:
        data += ["--train-limit", str(args.train_limit)]
    extra = args.tiny_flags
    job_dir, plain_dir = args.work / "job", args.work / "plain"
    # plain fine-tuning first: the job's tokenizer cache is not warm for it either way (each tokenises its own)
    plain_s = nasprune("train", *data, *extra, "--num-random-subnets", "0", "--importance", "none", "--space",
                       "uniform", "--out", str(plain_dir))
    job_s = nasprune("search", *data, *extra, *args.search_flags, "--out", str(job_dir))
    plain = json.loads((plain_dir / "training.json").read_text())
    job = json.loads((job_dir / "training.json").read_text())
    for name, record in (("fine-tuning", plain), ("job", job)):  # the figure names where both ran
        if not record["compute"]["device"].startswith(device.split(":")[0]):
            raise SystemExit(f"the {name} ran on {record['compute']['device']}, not on {device}: no figure")
    front = json.loads((job_dir / "front.json").read_text())
    return {"job_s": job_s, "plain_finetuning_s": plain_s, "ratio": job_s / plain_s,
            "plain_compute": plain["compute"], "job_compute": job["compute"],
            "plain_validation": plain["validation"]["full"], "job_full_validation": job["validation"]["full"],
            "front_points": len(front["points"]), "train_limit": args.train_limit}


def sliced_subs(config) -> dict[str, SubNetworkConfig]:
    layers = tuple(range(config.num_layers))
    subs = {}
    for share in (1.0, 0.5, 0.25, 0.1):
        subs[f"width {share:g}"] = SubNetworkConfig(
            layers=layers, heads=tuple(max(1, round(h * share)) for h in config.layer_heads),
            units=tuple(max(1, round(u * share)) for u in config.layer_units))
    half = tuple(range(0, config.num_layers, 2))
    subs["every other layer"] = SubNetworkConfig(layers=half, heads=config.layer_heads, units=config.layer_units)
    return subs


def graph_call(model: torch.nn.Module, ids: torch.Tensor):
    """The forward captured in a CUDA graph (static input), replayed: one launch for every kernel."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):  # warm-up on a side stream, as capture requires
            model(ids)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        model(ids)
    return graph.replay


def slicing(supernet, device: torch.device, *, seq: int, batches: list[int], repeats: int) -> list[dict]:
    config = supernet.config
    full_macs = count_macs(config, None, seq_len=seq)
    rows = []
    for batch in batches:
        ids = torch.randint(1, config.vocab_size, (batch, seq), device=device)
        calls, names = [], []
        for name, sub in sliced_subs(config).items():
            exported = extract(supernet, sub).to(device).eval()

            def sliced(sub=sub, ids=ids):
                with supernet.use(sub), torch.no_grad():
                    return supernet(ids)

            def small(model=exported, ids=ids):
                with torch.no_grad():
                    return model.model(ids)

            calls += [sliced, small]
            names.append((name, sub, exported))
        graphs = []
        if batch == 1 and device.type == "cuda":
            for name, _sub, exported in names:
                try:
                    graphs.append(graph_call(exported.model, ids))
                except Exception as exc:  # noqa: BLE001 (reported, not hidden)
                    print(f"CUDA graph capture of {name} failed: {exc}", flush=True)
                    graphs.append(None)
        times = time_calls(calls, repeats=repeats, device=device)
        graph_times = (time_calls([g for g in graphs if g is not None], repeats=repeats, device=device)
                       if any(graphs) else [])
        graph_iter = iter(graph_times)
        full_sliced, full_exported = times[0], times[1]
        for index, (name, sub, _exported) in enumerate(names):
            macs = count_macs(config, sub, seq_len=seq) / full_macs
            row = {"batch": batch, "seq": seq, "sub": name, "mac_share": macs,
                   "sliced_ms": times[2 * index], "exported_ms": times[2 * index + 1],
                   "sliced_share": times[2 * index] / full_sliced,
                   "exported_share": times[2 * index + 1] / full_exported}
            if graphs and graphs[index] is not None:
                row["graph_ms"] = next(graph_iter)
            rows.append(row)
            print(json.dumps(row), flush=True)
        for row in rows:
            if row["batch"] == batch and "graph_ms" in row:
                full_graph = next(r["graph_ms"] for r in rows if r["batch"] == batch and r["sub"] == "width 1")
                row["graph_share"] = row["graph_ms"] / full_graph
    return rows


def latency_model(supernet, run: Path, device: torch.device, *, samples: int, repeats: int, batch: int,
                  seq: int, calibrations: int = 1) -> dict:
    """The front points of the job's run if it is there, the full network and its first layer alone (the two ends
    of the range, so the ranking always spans it), and `samples` random sub-networks, each measured once; then
    `calibrations` tables calibrated one after another (fresh caches) predict them: how much the figure moves with
    the calibration alone."""
    front = json.loads((run / "front.json").read_text()) if (run / "front.json").is_file() else {"points": []}
    config = supernet.config
    subs = [SubNetworkConfig.from_dict(p["config"]).static() for p in front["points"]]
    subs += [SubNetworkConfig(layers=layers, heads=config.layer_heads, units=config.layer_units)
             for layers in (tuple(range(config.num_layers)), (0,))]
    subs += random_subnetworks(config, samples, seed=0)
    tables = [load_or_calibrate(supernet.config, batch_size=batch, seq_len=seq, device=device, repeats=repeats,
                                cache_dir=run.parent / f"latency-cache-{index}") for index in range(calibrations)]
    result = validate(supernet.cpu(), tables[0], subs, repeats=repeats, device=device)
    supernet.to(device)
    measured = np.array(result.measured_ms)
    figures = {"spearman": result.spearman, "mape": result.mape, "batch": batch, "seq": seq, "subs": len(subs),
               "front_points": len(front["points"]), "ends": 2, "predicted_ms": result.predicted_ms,
               "measured_ms": result.measured_ms, "tables": [table.to_dict() for table in tables]}
    figures["calibrations"] = []
    points = len(front["points"])
    for table in tables:
        predicted = np.array([table.predict(sub) for sub in subs])
        spearman, mape = agreement(predicted, measured)
        figures["calibrations"].append({
            "spearman": spearman, "mape": mape,
            "front_spearman": agreement(predicted[:points], measured[:points])[0] if points > 2 else None})
    return figures


def stream_runner(model, stream: list[dict], forward=None):
    """A call that runs `model` over the whole stream of batches without gradients (`forward(model, inputs)`, by
    default `model(**inputs)`): what one timing measures."""
    forward = forward or (lambda m, inputs: m(**inputs))

    def run() -> None:
        with torch.no_grad():
            for inputs in stream:
                forward(model, inputs)
    return run


def dev_batches(args: argparse.Namespace, device: torch.device, *, sentences: int, batch: int) -> list[dict]:
    """The first SST-2 dev sentences, tokenised in batches with dynamic padding (each batch to its longest)."""
    from supernet.convert import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(args.model))
    lines = (args.glue_dir / "SST-2" / "dev.tsv").read_text().splitlines()[1:sentences + 1]
    texts = [line.split("\t")[0] for line in lines]
    return [{k: v.to(device) for k, v in tokenizer(texts[i:i + batch], padding=True, truncation=True,
                                                  max_length=128, return_tensors="pt").items()}
            for i in range(0, len(texts), batch)]


def graphs(supernet, run: Path, args: argparse.Namespace, device: torch.device, *, sentences: int,
           batches: list[int], repeats: int) -> dict:
    """Exported models (the job's front points if it ran, and the full network) on real SST-2 dev sentences with
    dynamic padding: eager against replayed from CUDA graphs (`model.use_cuda_graphs()`, lengths padded up to a
    multiple of 32), the time of the whole stream of batches; then the full network under torch.compile
    (mode reduce-overhead, which also replays CUDA graphs) at batch 1, with its compile time."""
    front = json.loads((run / "front.json").read_text()) if (run / "front.json").is_file() else {"points": []}
    config = supernet.config
    subs = {"full": SubNetworkConfig(layers=tuple(range(config.num_layers)), heads=config.layer_heads,
                                     units=config.layer_units)}
    subs |= {f"point {i}": SubNetworkConfig.from_dict(p["config"]).static() for i, p in enumerate(front["points"])}
    full_macs = count_macs(config, None, seq_len=128)
    rows = []
    for batch in batches:
        stream = dev_batches(args, device, sentences=sentences, batch=batch)
        tokens = sum(int(b["attention_mask"].sum()) for b in stream)
        calls, names = [], []
        for name, sub in subs.items():
            eager, graphed = (extract(supernet, sub).to(device).eval() for _ in range(2))
            graphed.use_cuda_graphs(seq_multiple=32)
            started = time.perf_counter()
            with torch.no_grad():
                for inputs in stream:  # captures every (batch, bucket) the stream has, once
                    graphed(**inputs)
            torch.cuda.synchronize(device)
            capture_s = time.perf_counter() - started
            calls += [stream_runner(eager, stream), stream_runner(graphed, stream)]
            names.append((name, sub, graphed._graphs.captures, capture_s))
        times = time_calls(calls, repeats=repeats, device=device)
        for index, (name, sub, captures, capture_s) in enumerate(names):
            eager_ms, graph_ms = times[2 * index], times[2 * index + 1]
            row = {"batch": batch, "sub": name, "mac_share": count_macs(config, sub, seq_len=128) / full_macs,
                   "sentences": sentences, "tokens": tokens, "eager_ms": eager_ms, "graph_ms": graph_ms,
                   "speedup": eager_ms / graph_ms, "graphs": captures, "capture_s": capture_s}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"rows": rows, "seq_multiple": 32}


def compiled(supernet, args: argparse.Namespace, device: torch.device, *, sentences: int, repeats: int) -> dict:
    """The full network at batch 1 on a dynamically padded stream, three ways timed side by side: eager, replayed
    from CUDA graphs (`use_cuda_graphs`), and under torch.compile (mode reduce-overhead: Inductor's fused kernels,
    replayed from CUDA graphs), with the time compiling and recording took. Eager is also timed alone first, before
    anything is compiled."""
    stream = dev_batches(args, device, sentences=sentences, batch=1)
    config = supernet.config
    full = SubNetworkConfig(layers=tuple(range(config.num_layers)), heads=config.layer_heads,
                            units=config.layer_units)
    eager, graphed, to_compile = (extract(supernet, full).to(device).eval() for _ in range(3))
    graphed.use_cuda_graphs(seq_multiple=32)
    (alone_ms,) = time_calls([stream_runner(eager, stream)], repeats=repeats, device=device)
    try:
        model = torch.compile(to_compile.model, mode="reduce-overhead")
        started = time.perf_counter()
        with torch.no_grad():
            for _ in range(3):  # reduce-overhead records its graphs after warm-up runs of each shape
                for inputs in stream:
                    model(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - started
        run_compiled = stream_runner(model, stream, lambda m, inputs: m(
            inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids")))
        eager_ms, graph_ms, compiled_ms = time_calls(
            [stream_runner(eager, stream), stream_runner(graphed, stream), run_compiled],
            repeats=repeats, device=device)
        return {"batch": 1, "sentences": sentences, "eager_alone_ms": alone_ms, "eager_ms": eager_ms,
                "graph_ms": graph_ms, "compiled_ms": compiled_ms, "compile_s": compile_s}
    except Exception as exc:  # noqa: BLE001 (reported in the figures, not hidden)
        return {"eager_alone_ms": alone_ms, "error": f"{type(exc).__name__}: {exc}"[:500]}


def load_model(args: argparse.Namespace, device: torch.device):
    """The job's trained supernet if it ran, else the model as loaded (times do not depend on the weights)."""
    from supernet.convert import load_supernet_from_pretrained, resolve_model

    run = args.work / "job" / "supernet"
    if (run / "model.safetensors").is_file():
        return load_supernet(run, device)
    return load_supernet_from_pretrained(resolve_model(args.model), num_labels=2).to(device).eval()


def tiny_model(folder: Path) -> Path:
    """A tiny random BERT with MiniLM's tokenizer (the tests' model): the whole bench in seconds."""
    from transformers import BertConfig, BertForSequenceClassification

    from supernet.convert import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def memory(compute: dict) -> str:
    """A training record's peak memory: the GPU's where it trained on one, else the host's."""
    if "peak_device_memory_bytes" in compute:
        return f"GPU memory {compute['peak_device_memory_bytes'] / 2**20:.0f} MiB"
    return f"host memory {compute['peak_host_memory_bytes'] / 2**20:.0f} MiB"


def table_lines(results: dict) -> list[str]:
    """The RESULTS.md section of one run's figures (bench/prove_report.py)."""
    lines = [f"Device: {results['device']}, torch {results['torch']}; medians of {results.get('repeats', 7)} timings."]
    if results.get("model"):
        lines.append(f"Model: {results['model']}.")
    if results.get("tests"):
        lines.append(f"Tests there: {results['tests']}.")
    if results.get("runs"):
        lines.append("Runs (one machine each, started): " + "; ".join(f"{parts} {when}" for parts, when
                                                                       in results["runs"].items()) + ".")
    job = results.get("job")
    if job:
        lines += ["", f"- The default job on {results['task']} ({job['train_limit']:,} training sentences, 4 epochs, "
                  f"bfloat16 autocast, 100 evaluations) against plain fine-tuning of the full model on the same GPU: "
                  f"**{job['ratio']:.2f}x** (target ≤ 2; job {job['job_s']:.0f} s, fine-tuning "
                  f"{job['plain_finetuning_s']:.0f} s, both including tokenisation and evaluation); peak "
                  f"{memory(job['job_compute'])} (fine-tuning {memory(job['plain_compute'])}); full-network validation "
                  f"accuracy {job['job_full_validation']['accuracy']:.3f} (fine-tuning "
                  f"{job['plain_validation']['accuracy']:.3f}); {job['front_points']} front points."]
    latency = results.get("latency")
    if latency:
        lines += ["", f"- The latency model on the GPU: a block table calibrated there at {latency['batch']} x "
                  f"{latency['seq']} predicts {latency['subs']} exported sub-networks ({latency['front_points']} "
                  f"front points, {'the full network and its first layer alone, ' if latency.get('ends') else ''}"
                  f"the rest random), each timed as an exported model: Spearman "
                  f"**{latency['spearman']:.3f}** (target ≥ 0.9), MAPE {latency['mape']:.1f} %."]
        others = latency.get("calibrations", [])
        if len(others) > 1:
            lines[-1] += (f" Tables calibrated {len(others)} times in a row on the same machine, against the same "
                          "measurements: Spearman " + ", ".join(f"{c['spearman']:.3f}" for c in others)
                          + "; MAPE " + ", ".join(f"{c['mape']:.1f} %" for c in others) + ".")
        fronts = [c["front_spearman"] for c in others if c.get("front_spearman") is not None]
        if fronts:
            lines[-1] += (" Among the front points alone: Spearman " + ", ".join(f"{f:.2f}" for f in fronts) + ".")
        after = results.get("latency_after_job")
        if after:
            lines[-1] += (f" A table calibrated on another machine of the same kind, in the same script just after "
                          f"the job, predicted the same models far worse: Spearman {after['spearman']:.3f}, MAPE "
                          f"{after['mape']:.1f} % (it priced narrow layers almost as high as full ones).")
    rows = results.get("slicing")
    if rows:
        lines += ["", "- Forward time of sub-networks against their share of the full model's MACs (128 tokens): "
                  "sliced inside the supernet, exported, and at batch 1 replayed from a CUDA graph; each time as a "
                  "share of the full network's in the same mode (ms in brackets).", "",
                  "| batch | sub-network | MAC share | sliced | exported | exported, CUDA graph |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            graph = f"{r['graph_share']:.2f} ({r['graph_ms']:.2f})" if "graph_share" in r else "–"
            lines.append(f"| {r['batch']} | {r['sub']} | {r['mac_share']:.2f} | {r['sliced_share']:.2f} "
                         f"({r['sliced_ms']:.2f}) | {r['exported_share']:.2f} ({r['exported_ms']:.2f}) | {graph} |")
    graphed = results.get("graphs")
    if graphed and graphed.get("rows"):
        first = graphed["rows"][0]
        lines += ["", f"- CUDA graphs on exported models (`model.use_cuda_graphs()`): the first {first['sentences']} "
                  f"SST-2 dev sentences ({first['tokens']:,} tokens) in batches with dynamic padding, eager against "
                  f"replayed from CUDA graphs (lengths padded up to a multiple of {graphed['seq_multiple']}); time of "
                  "the whole stream, ms. Capture: graphs captured (one per batch size and length bucket) and the "
                  "seconds the first pass took with them.", "",
                  "| batch | model | MAC share | eager | CUDA graphs | speed-up | graphs (capture s) |",
                  "|---|---|---|---|---|---|---|"]
        for r in graphed["rows"]:
            lines.append(f"| {r['batch']} | {r['sub']} | {r['mac_share']:.2f} | {r['eager_ms']:.1f} | "
                         f"{r['graph_ms']:.1f} | **{r['speedup']:.2f}x** | {r['graphs']} ({r['capture_s']:.1f}) |")
    done = results.get("compile") or {}
    if "error" in done:
        lines += ["", f"- torch.compile (mode reduce-overhead) of the full network failed: {done['error']}"]
    elif done:
        per = 1 / done["sentences"]
        lines += ["", f"- The full network at batch 1, the first {done['sentences']} SST-2 dev sentences with dynamic "
                  f"padding, ms per sentence: eager {done['eager_ms'] * per:.2f} (alone, before anything was "
                  f"compiled: {done['eager_alone_ms'] * per:.2f}), CUDA graphs {done['graph_ms'] * per:.2f} "
                  f"(**{done['eager_ms'] / done['graph_ms']:.2f}x**), torch.compile (mode reduce-overhead) "
                  f"{done['compiled_ms'] * per:.2f} (**{done['eager_ms'] / done['compiled_ms']:.2f}x**) after "
                  f"{done['compile_s']:.0f} s of compiling and recording (each distinct length is a shape of its own)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="glue/sst2")
    parser.add_argument("--glue-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "glue")
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, required=True, help="run folders")
    parser.add_argument("--out", type=Path, required=True, help="the figures (JSON)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--samples", type=int, default=16, help="random sub-networks for the latency model")
    parser.add_argument("--parts", default="job,slicing,latency,graphs,compile", help="which, in this order")
    parser.add_argument("--sentences", type=int, default=256, help="SST-2 dev sentences the graphs part streams")
    parser.add_argument("--calibrations", type=int, default=1, help="latency tables calibrated in a row")
    parser.add_argument("--compile-sentences", type=int, default=64, help="... and the compile part")
    parser.add_argument("--tiny", action="store_true", help="the tiny random model of the tests: seconds")
    args = parser.parse_args()
    args.tiny_flags, args.search_flags = [], []
    device = resolve_device(args.device)
    if args.tiny:
        args.model, args.train_limit = str(tiny_model(args.work / "tiny-model")), 200
        args.tiny_flags = ["--max-length", "16", "--epochs", "1", "--validation-limit", "100"]
        args.search_flags = ["--evaluations", "4", "--latency-batch-size", "2"]
        args.repeats, args.samples = 2, 3
    results: dict = {"device": describe(device), "torch": torch.__version__, "task": args.task, "repeats": args.repeats,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    write(args.out, results)
    for part in args.parts.split(","):  # in the order given: a run cut short keeps the parts done
        if part == "job":
            results["job"] = job_vs_finetuning(args, str(device))
            print(json.dumps(results["job"]), flush=True)
        elif part == "slicing":
            seq = 16 if args.tiny else 128
            results["slicing"] = slicing(load_model(args, device), device, seq=seq,
                                         batches=[1, 4] if args.tiny else [1, 32, 256], repeats=args.repeats)
        elif part == "latency":
            seq, batch = (16, 2) if args.tiny else (128, 32)
            results["latency"] = latency_model(load_model(args, device), args.work / "job", device,
                                               samples=args.samples, repeats=args.repeats, batch=batch, seq=seq,
                                               calibrations=args.calibrations)
            print(json.dumps({k: v for k, v in results["latency"].items() if not k.endswith("_ms") and k != "tables"}),
                  flush=True)
        elif part == "graphs":
            if device.type != "cuda":
                raise SystemExit("the graphs part needs a CUDA device")
            results["graphs"] = graphs(load_model(args, device), args.work / "job", args, device,
                                       sentences=32 if args.tiny else args.sentences,
                                       batches=[1, 4] if args.tiny else [1, 32], repeats=args.repeats)
        elif part == "compile":
            results["compile"] = compiled(load_model(args, device), args, device,
                                          sentences=16 if args.tiny else args.compile_sentences, repeats=args.repeats)
            print(json.dumps(results["compile"]), flush=True)
        else:
            raise SystemExit(f"unknown part {part!r}: job, slicing, latency, graphs or compile")
        results[f"{part}_finished"] = time.strftime("%H:%M:%S")
        write(args.out, results)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write(args.out, results)
    for batch in (1, 32, 256):
        shares = [r["exported_share"] / r["mac_share"] for r in results.get("slicing", []) if r["batch"] == batch]
        if shares:
            print(f"batch {batch}: time share / MAC share of the exported sub-networks, median "
                  f"{statistics.median(shares):.2f}")


if __name__ == "__main__":
    main()
