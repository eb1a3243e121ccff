"""Throughput of the jitted all-MiniLM-L6-v2 encoder (the task KB's computing module), and the KB's accuracy.

    python -m multitask_jax.tools.bench_task_kb [--batch-sizes 1 8 32 128] [--repeats 7] [--json out.json]
    python -m multitask_jax.tools.bench_task_kb --requests tests/multitask_jax/task_requests_heldout.json [--json ...]

For each batch size it pads a batch of short task requests to its bucketed shape, compiles once (not
timed), then reports the median over `--repeats` runs of the jitted forward alone (`encoder` column) and of
tokenisation + padding + forward (`end-to-end` column), as sentences per second.

With `--requests FILE` (JSON {"requests": [{"text", "label"}, ...]}) it reports the accuracy of the default
task KB and of `LEGACY_CONFIG`, the KB before issue 14 (five phrasings per task, the single nearest
phrasing decides, threshold 0.3, no ambiguity margin, no unsupported-request check), per label and with
every miss.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax

from multitask_jax.sentence_encoder import SentenceEncoder
from multitask_jax.task_kb import TaskKB, TaskKBConfig, evaluate_requests
from multitask_jax.task_memory import TASK_INSTRUCTIONS

LEGACY_CONFIG = TaskKBConfig(  # the KB before the extended memory: its first five phrasings, best single match
    instructions={task: phrasings[:5] for task, phrasings in TASK_INSTRUCTIONS.items()},
    unsupported=(),
    top_k=1,
    threshold=0.3,
    margin=0.0,
)

REQUESTS = (
    "please outline every object in the picture",
    "reconstruct the transmitted image at the receiver",
    "which pixels belong to the car and which to the road",
    "I want to see the original photo in high quality",
)


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark(batch_sizes=(1, 8, 32, 128), repeats: int = 7, model_dir=None) -> dict:
    """Sentences/s of the encoder per batch size; compile time is reported apart and not in the rates."""
    encoder = SentenceEncoder(model_dir, max_batch=max(batch_sizes))
    rows = []
    for batch in batch_sizes:
        texts = [REQUESTS[i % len(REQUESTS)] for i in range(batch)]
        ids, mask = encoder.pad(encoder.tokenize(texts))
        start = time.perf_counter()
        encoder.encode_ids(ids, mask).block_until_ready()
        compile_s = time.perf_counter() - start
        run = lambda ids=ids, mask=mask: encoder.encode_ids(ids, mask).block_until_ready()
        forward = _median_seconds(run, repeats)
        full = _median_seconds(lambda texts=texts: encoder.encode(texts), repeats)
        rows.append(
            {
                "batch": batch,
                "padded_shape": list(ids.shape),
                "compile_s": compile_s,
                "encoder_sentences_per_s": batch / forward,
                "end_to_end_sentences_per_s": batch / full,
                "encoder_ms": 1e3 * forward,
            }
        )
    device = jax.devices()[0]
    return {"device": f"{device} ({device.device_kind})", "repeats": repeats, "rows": rows}


def load_requests(path) -> list[tuple[str, str]]:
    """(text, label) pairs from a JSON file {"requests": [{"text": ..., "label": ...}, ...]}."""
    with open(path) as f:
        return [(r["text"], r["label"]) for r in json.load(f)["requests"]]


def accuracy(path, model_dir=None) -> dict:
    """`evaluate_requests` on the file's requests for the default KB ('current') and `LEGACY_CONFIG`."""
    requests = load_requests(path)
    encoder = SentenceEncoder(model_dir)
    kbs = {"current": TaskKB(encoder=encoder), "legacy": TaskKB(LEGACY_CONFIG, encoder=encoder)}
    return {name: evaluate_requests(kb, requests) for name, kb in kbs.items()}


def print_accuracy(result: dict) -> None:
    for name, r in result.items():
        labels = ", ".join(f"{k} {c}/{n}" for k, (c, n) in sorted(r["per_label"].items()))
        print(f"{name:>8}: {r['correct']}/{r['total']} = {100 * r['accuracy']:.1f}%  ({labels})")
        for m in r["mistakes"]:
            print(f"          miss: {m['text']!r} want {m['want']}, got {m['got']} {m['scores']}")


def main(argv=None) -> dict:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model-dir", default=None, help="all-MiniLM-L6-v2 folder (default: search)")
    parser.add_argument("--requests", default=None, help="labelled requests (JSON): report KB accuracy instead")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.requests:
        result = accuracy(args.requests, args.model_dir)
        print_accuracy(result)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return result
    if min(args.batch_sizes) < 1 or args.repeats < 1:
        parser.error("batch sizes and --repeats must be >= 1")
    result = benchmark(tuple(args.batch_sizes), args.repeats, args.model_dir)
    print(f"all-MiniLM-L6-v2 (Flax, jitted) on {result['device']}, median of {result['repeats']} runs")
    header = ("batch", "padded (B, L)", "compile s", "encoder sent/s", "end-to-end sent/s")
    print("{:>6} {:>14} {:>10} {:>15} {:>18}".format(*header))
    for r in result["rows"]:
        shape = "({}, {})".format(*r["padded_shape"])
        print(
            f"{r['batch']:>6} {shape:>14} {r['compile_s']:>10.2f} "
            f"{r['encoder_sentences_per_s']:>15.1f} {r['end_to_end_sentences_per_s']:>18.1f}"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
