"""SOP + masking builder (issue 4, P2): ours (`albert_core.pretraining_data`) vs the plain-Python port of the
reference (`benchmarks.reference_port`), same encoded documents, one process.

Documents: the WikiText-2 validation articles and the chapters of the Gutenberg books in `../shared/corpora`,
split into sentences with `albert_core.text`, encoded with a SentencePiece model trained here (nothing downloaded).
Each repetition builds every instance of every `dupe_factor` pass with both builders in turn (interleaved, order
alternating, so machine noise hits both alike); the figure is the median instances/s and the median of the
per-repetition ratios ours / port. The two do not make the same number of instances (short targets are random,
and a short pass of a long document makes many short ones), so the ratio of times for the whole input and of
tokens/s are given too.

- ours: `build_instances`, padded int32 rows (the `Instance` arrays), statically masked.
- port: `create_training_instances` (piece strings, as the reference) plus `instance_features` (ids + padding, what
  `write_instance_to_example_files` does before TFRecord serialisation), so both end at padded id rows. The port's
  build-only rate is reported beside it.

Memory: a fresh child process loads the encoded documents, then streams `build_instances` into a zstd Parquet file
in row groups of `CHUNK_ROWS`; its peak RSS above the RSS it had with the documents loaded (Linux VmHWM, reset
through /proc/self/clear_refs; a polling thread where that is not available) is compared with the size of the
output, as Arrow in memory and as the Parquet file. A second child only iterates the build, to show what the
writing adds. Goals (issue 4): ratio >= 10, peak RSS delta <= 2x the output size.

Run: `python -m benchmarks.sop_builder [--quick]`. Writes benchmarks/results/sop_builder.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from albert_core.pretraining_data import Instance, SopConfig, SpecialIds, build_instances
from albert_core.text import join_wrapped_lines, normalize, split_sentences
from albert_core.tokenizer import SentencePieceTokenizer
from benchmarks.reference_port import create_training_instances, instance_features
from data_jobs.shards import special_ids

RESULTS = Path(__file__).parent / "results"
CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
CHUNK_ROWS = 1024  # rows per Parquet row group in the streaming write (the transient buffers scale with it)
BOOKS = ("austen-emma", "carroll-alice", "chesterton-thursday", "melville-moby_dick")

# --- documents ---------------------------------------------------------------------------------------------------

_WIKI_TITLE = re.compile(r"^ = [^=].* = $")  # ` = Title = ` starts an article; ` = = Section = = ` does not
_WIKI_HEADING = re.compile(r"^ (= )+.*( =)+ $")
_CHAPTER = re.compile(r"^CHAPTER\b")


def wikitext_articles(path: Path, sections: bool = False) -> dict[str, list[str]]:
    """Sentences of each WikiText article (one paragraph per line, headings dropped), keyed `wikitext:<k>`;
    with `sections`, every ` = = Section = = ` heading starts a document too (many short documents)."""
    docs: dict[str, list[str]] = {}
    sentences: list[str] | None = None
    for line in normalize(path.read_text(encoding="utf-8")).split("\n"):
        if _WIKI_TITLE.match(line) or (sections and sentences is not None and _WIKI_HEADING.match(line)):
            sentences = docs.setdefault(f"wikitext:{len(docs):04d}", [])
        elif sentences is not None and line.strip() and not _WIKI_HEADING.match(line):
            sentences += split_sentences(line.strip())
    return docs


def book_chapters(path: Path) -> dict[str, list[str]]:
    """Sentences of each chapter of a hard-wrapped Gutenberg book (text before the first CHAPTER dropped),
    keyed `<book>:<k>`."""
    docs: dict[str, list[str]] = {}
    lines: list[str] | None = None
    chapters: list[list[str]] = []
    for line in normalize(path.read_text(encoding="utf-8")).split("\n"):
        if _CHAPTER.match(line):
            lines = []
            chapters.append(lines)
        elif lines is not None:
            lines.append(line)
    for k, chapter in enumerate(chapters):
        paragraphs = join_wrapped_lines(chapter)
        docs[f"{path.stem}:{k:03d}"] = [s for p in paragraphs for s in split_sentences(p)]
    return docs


def corpus_documents(
    corpora: Path, books: Iterable[str] = BOOKS, wiki_sections: bool = False
) -> dict[str, list[str]]:
    """WikiText-2 valid articles (or sections) plus the chapters of `books`: sentences per document id."""
    docs = wikitext_articles(corpora / "wikitext2-valid.raw.txt", sections=wiki_sections)
    for book in books:
        docs.update(book_chapters(corpora / "gutenberg" / f"{book}.txt"))
    return {doc_id: sentences for doc_id, sentences in docs.items() if sentences}


def encode_documents(
    tok: SentencePieceTokenizer, docs: Mapping[str, list[str]]
) -> dict[str, list[list[int]]]:
    """Token ids per sentence; sentences that encode to nothing are dropped (the reference's `if tokens:`)."""
    ids = iter(tok.encode([s for sentences in docs.values() for s in sentences]))
    encoded = {doc_id: [next(ids) for _ in sentences] for doc_id, sentences in docs.items()}
    return {doc_id: [s for s in sentences if s] for doc_id, sentences in encoded.items()}


def port_inputs(
    tok: SentencePieceTokenizer, encoded: Mapping[str, list[list[int]]]
) -> tuple[list[str], list[list[list[str]]], list[str], dict[str, int]]:
    """The same documents for the port: (doc ids in sorted order, documents as pieces, vocab_words, piece -> id)."""
    vocab_words = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    ids = sorted(encoded)
    documents = [[[vocab_words[t] for t in s] for s in encoded[doc_id]] for doc_id in ids]
    return ids, documents, vocab_words, {piece: i for i, piece in enumerate(vocab_words)}


# --- output ------------------------------------------------------------------------------------------------------


def instances_digest(instances: Iterable[Instance]) -> tuple[int, str, int]:
    """(count, sha256, tokens) over every field of every instance in order: equal digests mean identical
    output; tokens counts the real (unpadded) positions."""
    h = hashlib.sha256()
    n = tokens = 0
    for inst in instances:
        h.update(f"{inst.doc_id}\x00{inst.pass_index}\x00{inst.index}\x00".encode())
        for a in (inst.input_ids, inst.token_type_ids, inst.attention_mask, inst.word_start):
            h.update(a.tobytes())
        for a in (inst.masked_lm_positions, inst.masked_lm_ids, inst.masked_lm_weights):
            h.update(a.tobytes())
        h.update(bytes([inst.sop_label, inst.single_sentence_negative, inst.short_target]))
        n += 1
        tokens += int(inst.attention_mask.sum())
    return n, h.hexdigest(), tokens


def _schema(cfg: SopConfig) -> pa.Schema:
    seq, pred = pa.list_(pa.int32(), cfg.max_seq_len), pa.list_(pa.int32(), cfg.max_predictions)
    return pa.schema(
        [
            ("input_ids", seq),
            ("token_type_ids", seq),
            ("attention_mask", seq),
            ("sop_label", pa.int8()),
            ("masked_lm_positions", pred),
            ("masked_lm_ids", pred),
            ("masked_lm_weights", pa.list_(pa.float32(), cfg.max_predictions)),
        ]
    )


def write_parquet(
    instances: Iterable[Instance], path: Path, cfg: SopConfig, chunk_rows: int
) -> dict[str, int]:
    """Stream instances into one zstd Parquet file, `chunk_rows` rows per row group; returns rows and sizes.

    Each instance is copied into preallocated column buffers as it arrives, so a chunk is held once, as the
    arrays Arrow writes from (zero-copy), not also as `Instance` objects.
    """
    schema = _schema(cfg)
    names = [name for name in schema.names if name != "sop_label"]
    buffers = {name: np.zeros((chunk_rows, schema.field(name).type.list_size), np.int32) for name in names}
    buffers["masked_lm_weights"] = np.zeros((chunk_rows, cfg.max_predictions), np.float32)
    labels = np.zeros(chunk_rows, np.int8)

    def flush(n: int) -> int:
        columns = {
            name: pa.FixedSizeListArray.from_arrays(pa.array(buf[:n].ravel()), buf.shape[1])
            for name, buf in buffers.items()
        }
        columns["sop_label"] = pa.array(labels[:n])
        batch = pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)
        writer.write_batch(batch)
        return batch.nbytes

    rows = arrow_bytes = i = 0
    # No dictionary pages: the dictionary builder held more memory than the chunk itself, for a larger file
    # (measured on the full input: peak delta 34 -> 26 MB at 2048 rows, 20 -> 16 MB at 1024).
    with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=False) as writer:
        for inst in instances:
            for name, buf in buffers.items():
                buf[i] = getattr(inst, name)
            labels[i] = inst.sop_label
            i += 1
            if i == chunk_rows:
                arrow_bytes += flush(i)
                rows, i = rows + i, 0
        if i:
            arrow_bytes += flush(i)
            rows += i
    return {"rows": rows, "arrow_bytes": arrow_bytes, "parquet_bytes": path.stat().st_size}


# --- memory (child process) --------------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


class _PeakRss:
    """Peak RSS over a block: VmHWM reset by /proc/self/clear_refs, else a thread polling VmRSS every 2 ms."""

    def __enter__(self) -> _PeakRss:
        self.method = "VmHWM after clear_refs"
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "VmRSS polled every 2 ms"
        self.peak, self._stop = _rss(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        if self.method.startswith("VmHWM"):
            self.peak = max(self.peak, _hwm())


def rss_child(inputs: Path, out: Path, write: bool) -> dict[str, Any]:
    """Streaming build of the whole input in this (fresh) process, written to `out` in chunks or (`write` off)
    only iterated; prints and returns the figures."""
    with inputs.open("rb") as f:
        encoded, word_start, special, cfg, chunk_rows = pickle.load(f)
    # Warm-up on two documents: library set-up (Parquet writer, zstd) is not memory of the job.
    warm = {k: encoded[k] for k in sorted(encoded)[:2]}
    write_parquet(build_instances(warm, cfg, special, word_start), out, cfg, chunk_rows)
    before = _rss()
    t0 = time.perf_counter()
    with _PeakRss() as peak:
        instances = build_instances(encoded, cfg, special, word_start)
        if write:
            sizes = write_parquet(instances, out, cfg, chunk_rows)
        else:
            sizes = {"rows": sum(1 for _ in instances)}
    seconds = time.perf_counter() - t0
    result = {
        **sizes,
        "rss_before_bytes": before,
        "rss_peak_bytes": peak.peak,
        "rss_delta_bytes": peak.peak - before,
        "peak_method": peak.method,
        "chunk_rows": chunk_rows,
        "seconds": seconds,
        "instances_per_s": sizes["rows"] / seconds,
    }
    print(json.dumps(result))
    return result


def measure_memory(
    encoded: Mapping[str, list[list[int]]], word_start: np.ndarray, special: SpecialIds, cfg: SopConfig
) -> dict[str, Any]:
    """Build + write in one fresh process, build alone in another (what the writing adds shows apart)."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs, out = Path(tmp) / "inputs.pkl", Path(tmp) / "out.parquet"
        with inputs.open("wb") as f:
            pickle.dump((dict(encoded), word_start, special, cfg, CHUNK_ROWS), f)
        for mode in ("write", "build"):
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.sop_builder", "--rss-child", mode, str(inputs), str(out)],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).resolve().parents[1],
            )
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    r = results["write"]
    r["build_only_rss_delta_bytes"] = results["build"]["rss_delta_bytes"]
    r["delta_over_arrow"] = r["rss_delta_bytes"] / r["arrow_bytes"]
    r["delta_over_parquet"] = r["rss_delta_bytes"] / r["parquet_bytes"]
    return r


# --- speed -------------------------------------------------------------------------------------------------------


def run_ours(
    encoded: Mapping[str, list[list[int]]], cfg: SopConfig, special: SpecialIds, ws: np.ndarray
) -> int:
    return sum(1 for _ in build_instances(encoded, cfg, special, ws))


def run_port(
    documents: list[list[list[str]]], vocab_words: list[str], vocab: dict[str, int], cfg: SopConfig
) -> tuple[int, int, float]:
    """Returns (instances, tokens, seconds of the build alone); the caller times build + features."""
    t0 = time.perf_counter()
    instances = create_training_instances(
        documents,
        vocab_words,
        cfg.max_seq_len,
        cfg.dupe_factor,
        cfg.short_seq_prob,
        cfg.masked_lm_prob,
        cfg.max_predictions,
        seed=cfg.seed,
        ngram=cfg.max_ngram,
    )
    build = time.perf_counter() - t0
    tokens = 0
    for inst in instances:
        tokens += sum(instance_features(inst, vocab, cfg.max_seq_len, cfg.max_predictions)["input_mask"])
    return len(instances), tokens, build


def bench_speed(
    encoded: Mapping[str, list[list[int]]], tok: SentencePieceTokenizer, cfg: SopConfig, reps: int
) -> dict[str, Any]:
    special, ws = special_ids(tok), tok.word_start_mask()
    _, documents, vocab_words, vocab = port_inputs(tok, encoded)
    ours_s, port_s, port_build_s = [], [], []
    n_ours = n_port = port_tokens = 0
    for rep in range(reps):
        for variant in ("ours", "port") if rep % 2 == 0 else ("port", "ours"):
            t0 = time.perf_counter()
            if variant == "ours":
                n_ours = run_ours(encoded, cfg, special, ws)
                ours_s.append(time.perf_counter() - t0)
            else:
                n_port, port_tokens, build = run_port(documents, vocab_words, vocab, cfg)
                port_s.append(time.perf_counter() - t0)
                port_build_s.append(build)
        print(f"rep {rep}: ours {n_ours / ours_s[-1]:8.0f} inst/s  port {n_port / port_s[-1]:8.0f} inst/s  "
              f"ratio {port_s[-1] / n_port * n_ours / ours_s[-1]:.1f}", file=sys.stderr, flush=True)  # fmt: skip
    ours_ips = [n_ours / s for s in ours_s]
    port_ips = [n_port / s for s in port_s]
    port_build_ips = [n_port / s for s in port_build_s]
    ratios = [o / p for o, p in zip(ours_ips, port_ips, strict=True)]
    build_ratios = [o / p for o, p in zip(ours_ips, port_build_ips, strict=True)]
    # Same documents, same parameters, but not the same number of instances: short targets are drawn at random
    # and a short pass of a long document makes many short instances. Time for the whole input and tokens/s are
    # given beside instances/s for that reason.
    digest = instances_digest(build_instances(encoded, cfg, special, ws))
    time_ratios = [p / o for o, p in zip(ours_s, port_s, strict=True)]
    return {
        "ours_instances": n_ours,
        "port_instances": n_port,
        "ours_tokens": digest[2],
        "port_tokens": port_tokens,
        "ours_instances_per_s": statistics.median(ours_ips),
        "port_instances_per_s": statistics.median(port_ips),
        "port_build_only_instances_per_s": statistics.median(port_build_ips),
        "ours_tokens_per_s": digest[2] / statistics.median(ours_s),
        "port_tokens_per_s": port_tokens / statistics.median(port_s),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_vs_port_build_only": statistics.median(build_ratios),
        "ratio_same_input_time": statistics.median(time_ratios),
        "ratio_tokens_per_s": statistics.median(
            [digest[2] / o / (port_tokens / p) for o, p in zip(ours_s, port_s, strict=True)]
        ),
        "ours_seconds": ours_s,
        "port_seconds": port_s,
        "port_build_seconds": port_build_s,
        "reps": reps,
        "ours_digest": digest[1],
    }


# --- main --------------------------------------------------------------------------------------------------------


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="WikiText + one book, dupe_factor 2, 3 repetitions"
    )
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--dupe-factor", type=int, default=None)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--rss-child", nargs=3, metavar=("MODE", "INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        mode, inputs, out = args.rss_child
        rss_child(Path(inputs), Path(out), write=mode == "write")
        return
    reps = args.reps or (3 if args.quick else 5)
    dupe = args.dupe_factor or (2 if args.quick else 3)
    vocab_size = args.vocab_size or (8000 if args.quick else 16000)
    books = ("carroll-alice",) if args.quick else BOOKS
    env: dict[str, Any] = {
        "python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa.__version__,
        "builder_threads": 1, "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_before": _load(),
        "machine": platform.machine(),
    }  # fmt: skip

    t0 = time.perf_counter()
    docs = corpus_documents(args.corpora, books)
    tok = SentencePieceTokenizer.train(
        (s for sentences in docs.values() for s in sentences), vocab_size=vocab_size
    )
    encoded = encode_documents(tok, docs)
    tokens = sum(len(s) for sentences in encoded.values() for s in sentences)
    print(f"{len(encoded)} documents, {tokens} tokens, vocab {tok.vocab_size} "
          f"({time.perf_counter() - t0:.1f} s to prepare)", file=sys.stderr, flush=True)  # fmt: skip
    cfg = SopConfig(max_seq_len=args.max_seq_len, dupe_factor=dupe)
    inputs = {
        "documents": len(encoded), "sentences": sum(len(s) for s in encoded.values()), "tokens": tokens,
        "vocab_size": tok.vocab_size, "books": list(books), "wikitext": "wikitext2-valid.raw.txt",
    }  # fmt: skip
    speed = bench_speed(encoded, tok, cfg, reps)
    memory = measure_memory(encoded, tok.word_start_mask(), special_ids(tok), cfg)
    env["load_avg_after"] = _load()
    config = {"max_seq_len": cfg.max_seq_len, "dupe_factor": cfg.dupe_factor, "max_predictions": cfg.max_predictions,
              "masked_lm_prob": cfg.masked_lm_prob, "short_seq_prob": cfg.short_seq_prob, "seed": cfg.seed}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    result = {
        "goal": "ratio >= 10; rss_delta <= 2x output size",
        "goal_met": {
            "ratio": speed["ratio"] >= 10,
            "rss_vs_arrow": memory["delta_over_arrow"] <= 2,
            "rss_vs_parquet": memory["delta_over_parquet"] <= 2,
        },
        "quick": args.quick,
        "env": env,
        "inputs": inputs,
        "config": config,
        "rows": [speed],
        "memory": memory,
    }
    (RESULTS / "sop_builder.json").write_text(json.dumps(result, indent=2))
    m = memory
    lines = [
        "| documents | tokens | dupe | instances ours / port | ours inst/s | port inst/s (build only) "
        "| ratio inst/s (min-max) | vs build only | ratio, time for the input | ratio tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {inputs['documents']} | {tokens} | {dupe} | {speed['ours_instances']} / {speed['port_instances']} "
        f"| {speed['ours_instances_per_s']:.0f} "
        f"| {speed['port_instances_per_s']:.0f} ({speed['port_build_only_instances_per_s']:.0f}) "
        f"| {speed['ratio']:.1f} ({speed['ratio_min']:.1f}-{speed['ratio_max']:.1f}) "
        f"| {speed['ratio_vs_port_build_only']:.1f} | {speed['ratio_same_input_time']:.1f} "
        f"| {speed['ratio_tokens_per_s']:.1f} |",
        "",
        "| rows | Arrow MB | Parquet MB | RSS before MB | peak delta MB: build+write (build only) "
        "| delta / Arrow | delta / Parquet |",
        "|---|---|---|---|---|---|---|",
        f"| {m['rows']} | {m['arrow_bytes'] / 2**20:.1f} | {m['parquet_bytes'] / 2**20:.1f} "
        f"| {m['rss_before_bytes'] / 2**20:.1f} | {m['rss_delta_bytes'] / 2**20:.1f} "
        f"({m['build_only_rss_delta_bytes'] / 2**20:.1f}) | {m['delta_over_arrow']:.2f} | {m['delta_over_parquet']:.2f} |",
        f"\nmax_seq_len {cfg.max_seq_len}, dupe_factor {dupe}, {reps} interleaved repetitions, "
        f"{inputs['documents']} documents ({inputs['sentences']} sentences), vocab {tok.vocab_size}; "
        f"builder threads 1, cpus {env['cpus']}, load {env['load_avg_before']} -> {env['load_avg_after']}; "
        f"peak by {m['peak_method']}, Parquet zstd in row groups of {m['chunk_rows']} rows, "
        f"streamed at {m['instances_per_s']:.0f} inst/s",
    ]
    (RESULTS / "sop_builder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
