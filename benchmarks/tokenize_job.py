"""Tokenize job throughput (issue 9, P1): the tokenize job (`data_jobs.tokenize.tokenize_corpus`: text -> token-id
Parquet) vs raw SentencePiece x cores and vs Hugging Face `datasets.map` + `AlbertTokenizer` (tokenizers-backed)
writing Parquet, in MB of sentence text per second (MB = 10^6 UTF-8 bytes of the documents' sentences, the
`text_bytes` the manifests count; the same bytes for every variant). Plus scaling curves and peak memory.

Input: WikiText-2 valid and zhwiki_bert_sampled from `../shared/corpora`, ingested once with
`data_jobs.ingest.ingest` into a temporary ALBERT_HOME (corpus `real`), a 16000-piece tokenizer trained on it once
with the tokenizer job, then published as derived corpus versions that repeat those documents with ids suffixed
`#r<k>` until the wanted size (the last copy is an evenly spaced subset, so both languages stay in proportion).
Ingestion would drop the repeats as duplicates, hence the derived versions. None of this is timed.

Figures at the headline size (8 MB; `--quick` 2 MB); each repetition runs every variant once, in rotating order,
after one untimed warm-up round; medians and the min-max of per-repetition ratios:

- ours, workers N: `tokenize_corpus(..., workers=N)` into a fresh `tokenized/` folder: plan units from Parquet
  metadata, one Ray task per row group (at most N at a time) reads it once and per unit preprocesses in
  pyarrow.compute + encodes (SentencePiece batch, int32 buffers, `cores // N` threads, more when there are fewer
  row groups than N) + builds Arrow lists from offsets + writes zstd Parquet, then sha256s, manifest and rename. Ray is already up (its start is reported
  apart). N = cores is the headline (what the CLI does by default).
- (a) raw spm x cores: `SentencePieceProcessor.encode(sentences, num_threads=1)` on the same, already
  preprocessed sentences in this process, times the core count: only the C++ encode, no I/O. An ideal.
- (b) HF: a fresh child process loads our saved tokenizer folder with `transformers.AlbertTokenizer` and times
  `Dataset.from_parquet` (our docs files) -> `map` (batched, num_proc = cores, cache off) -> `to_parquet`.
  Imports and tokenizer load untimed. TOKENIZERS_PARALLELISM=false (one thread per process).
- shards end to end (a separate row, not part of P1): `build_shards(..., workers=cores)` with nothing built
  (tokenize job + pool + SOP pairs + static masking + zstd Parquet), max_seq_len 128, dupe_factor 1.
- Ray Data fixed cost: the tokenize job's plan (one item per unit) through `map_batches` with a no-op function,
  as tasks (what the job used until it ran plain Ray tasks) and as an actor pool of `cores` actors (what the
  shards job used before).

Scaling: the tokenize job's MB/s and peak memory vs input size (1-32 MB; `--quick` 1-4 MB), and the shards job
(SOP only: its tokenized input already built) peak memory vs size; memory is the peak of the summed RSS of this
process and all its descendants (Ray's raylet, GCS and workers) sampled every 50 ms, minus that sum before the
job (shared pages are counted once per process, so this over-states). Plot: results/tokenize_scaling.png.

Goals: ours >= 0.8 x (a) and >= 4 x (b).

Run: `python -m benchmarks.tokenize_job [--quick]`. Writes benchmarks/results/tokenize_job.{json,md} and
benchmarks/results/tokenize_scaling.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import sentencepiece as spm

from albert_core.tokenizer import preprocess_text
from data_jobs import tokenize
from data_jobs.corpus import CorpusVersion, publish_version, resolve_version
from data_jobs.ingest import ingest
from data_jobs.ray_runtime import ensure_ray
from data_jobs.shards import ShardsConfig, build_shards
from data_jobs.tokenizer_job import TokenizerJobConfig, load_tokenizer, train_tokenizer

RESULTS = Path(__file__).parent / "results"
CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
SOURCES = ("wikitext2-valid.raw.txt", "zhwiki_bert_sampled.txt")
MB = 1e6
VOCAB_SIZE = 16000
TOKENIZER = "bench"
PROFILE_ROWS = 15

# --- input (untimed) ---------------------------------------------------------------------------------------------


def _doc_bytes(table: pa.Table) -> np.ndarray:
    """UTF-8 bytes of each document's sentences (what the shards manifest counts as text_bytes)."""
    sentences = table["sentences"].combine_chunks()
    lengths = pc.binary_length(pc.list_flatten(sentences)).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(sentences).to_numpy(zero_copy_only=False)
    return np.bincount(parents, weights=lengths, minlength=len(table)).astype(np.int64)


def derive_corpus(home: Path, source: CorpusVersion, name: str, target_bytes: int) -> dict[str, Any]:
    """Publish `name`: the documents of `source` repeated with ids `<id>#r<k>` until `target_bytes`. Each copy
    is one row group of one docs file, as ingestion writes a corpus of this size."""
    table = pa.concat_tables(pq.read_table(f) for f in source.doc_files())
    per_doc = _doc_bytes(table)
    copies: list[pa.Table] = []
    remaining = target_bytes
    while remaining > 0:
        rows = table
        if per_doc.sum() > remaining:  # evenly spaced subset holding about `remaining` bytes
            share = remaining / per_doc.sum()
            k = np.arange(len(table) + 1)
            rows = table.take(np.flatnonzero(np.diff(np.floor(k * share)) > 0))
            if not len(rows):  # less than a document left: done (an empty copy would never end the loop)
                break
        suffix = pa.scalar(f"#r{len(copies)}")
        copies.append(rows.set_column(0, "id", pc.binary_join_element_wise(rows["id"], suffix, "")))
        remaining -= int(_doc_bytes(rows).sum())

    def build(folder: Path) -> dict[str, Any]:
        with pq.ParquetWriter(folder / "docs-00000.parquet", table.schema, compression="zstd") as writer:
            for copy in copies:
                writer.write_table(copy)
        return {"derived_from": source.id, "copies": len(copies), "note": "benchmark input (repeated ids)"}

    version = publish_version(home, name, build)
    docs = pa.concat_tables(copies)
    return {
        "corpus": version.id,
        "copies": len(copies),
        "documents": len(docs),
        "sentences": len(pc.list_flatten(docs["sentences"])),
        "text_bytes": int(_doc_bytes(docs).sum()),
        "by_source_bytes": {
            src: int(_doc_bytes(docs.filter(pc.equal(docs["source"], src))).sum())
            for src in sorted(set(docs["source"].to_pylist()))
        },
    }


def prepare(home: Path, target_bytes: int) -> dict[str, Any]:
    """Ingest the real corpora, train the tokenizer, publish the repeated version; returns what was made."""
    t0 = time.perf_counter()
    summary = ingest([str(CORPORA / s) for s in SOURCES], "real", home=home)
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_tokenizer("real", home=home, name=TOKENIZER, cfg=TokenizerJobConfig(vocab_size=VOCAB_SIZE))
    tokenizer_s = time.perf_counter() - t0
    derived = derive_corpus(home, resolve_version(home, "real"), "bench", target_bytes)
    return {
        "sources": list(SOURCES),
        "real": {k: summary[k] for k in ("documents", "sentences", "bytes", "layouts", "duplicates")},
        "bench": derived,
        "vocab_size": VOCAB_SIZE,
        "setup_seconds": {"ingest": round(ingest_s, 1), "tokenizer": round(tokenizer_s, 1)},
    }


# --- variants ----------------------------------------------------------------------------------------------------


class PeakRss:
    """Peak of the summed RSS of this process and its descendants (Ray's processes), above the sum at entry."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = self.baseline = 0
        self._stop = threading.Event()

    @staticmethod
    def total() -> int:
        me = psutil.Process()
        rss = 0
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a worker that exited between listing and reading
                rss += proc.memory_info().rss
        return rss

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self.total()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.total())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.total())

    @property
    def delta(self) -> int:
        return self.peak - self.baseline


def _fresh(home: Path, *folders: str) -> None:
    for folder in folders:
        for old in (home / folder).glob("*"):
            shutil.rmtree(old)


def run_tokenize(home: Path, corpus: str, workers: int, memory: bool = False) -> dict[str, Any]:
    """One tokenize job into a fresh `tokenized/` folder (the previous one deleted first, untimed)."""
    _fresh(home, "tokenized")
    tok, _ = load_tokenizer(home, TOKENIZER)
    source = resolve_version(home, corpus)
    with PeakRss() if memory else _NoPeak() as peak:
        t0 = time.perf_counter()
        manifest = tokenize.tokenize_corpus(home, source, tok, workers)
        seconds = time.perf_counter() - t0
    assert not manifest["reused"]
    return {"seconds": seconds, "text_bytes": manifest["statistics"]["text_bytes"], "files": len(manifest["files"]),
            "rss_delta_bytes": peak.delta, "rss_peak_bytes": peak.peak}  # fmt: skip


def run_shards(home: Path, corpus: str, workers: int, cfg: ShardsConfig, *, fresh_tokens: bool,
               memory: bool = False) -> dict[str, Any]:  # fmt: skip
    """One shards build into a fresh `shards/` folder; `fresh_tokens` deletes the tokenized ids too (end to end)."""
    _fresh(home, "shards", *(["tokenized"] if fresh_tokens else []))
    with PeakRss() if memory else _NoPeak() as peak:
        t0 = time.perf_counter()
        summary = build_shards(corpus, TOKENIZER, home=home, workers=workers, cfg=cfg)
        seconds = time.perf_counter() - t0
    assert not summary["reused"]
    return {"seconds": seconds, "text_bytes": summary["statistics"]["text_bytes"],
            "instances": sum(summary["instances"].values()), "rss_delta_bytes": peak.delta,
            "rss_peak_bytes": peak.peak}  # fmt: skip


class _NoPeak:
    delta = peak = 0

    def __enter__(self) -> _NoPeak:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _noop(batch: pa.Table) -> pa.Table:
    return pa.table({"rows": [batch.num_rows]})


class _NoOpActor:
    def __call__(self, batch: pa.Table) -> pa.Table:
        return _noop(batch)


def run_ray_floor(units: list[tokenize.Unit], cores: int, actors: bool) -> dict[str, Any]:
    """The tokenize job's Ray Data pipeline (one item per unit, batch_size 1) with a no-op: tasks or an actor pool."""
    t0 = time.perf_counter()
    plan = ray.data.from_items([asdict(u) for u in units], override_num_blocks=len(units))
    if actors:
        ds = plan.map_batches(_NoOpActor, batch_format="pyarrow", batch_size=1,
                              compute=ray.data.ActorPoolStrategy(size=cores), num_cpus=1)  # fmt: skip
    else:
        ds = plan.map_batches(_noop, batch_format="pyarrow", batch_size=1,
                              compute=ray.data.TaskPoolStrategy(size=cores), num_cpus=1)  # fmt: skip
    rows = sum(sum(t["rows"].to_pylist()) for t in ds.iter_batches(batch_format="pyarrow", batch_size=None))
    assert rows == len(units)
    return {"seconds": time.perf_counter() - t0, "units": rows}


def run_spm(sp: spm.SentencePieceProcessor, sentences: list[str], inner: int = 3) -> dict[str, Any]:
    """`inner` back-to-back encodes, the median kept: at ~1 s a single one is at the mercy of a load spike."""
    seconds = []
    for _ in range(inner):
        t0 = time.perf_counter()
        ids = sp.encode(sentences, out_type=int, num_threads=1)
        seconds.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(seconds), "all_seconds": seconds, "tokens": sum(map(len, ids))}


def _hf_encode(batch: dict[str, list], tokenizer: Any) -> dict[str, list]:
    """Every sentence of the batch's documents in one tokenizer call, regrouped per document."""
    flat = [s for sentences in batch["sentences"] for s in sentences]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out, at = [], 0
    for sentences in batch["sentences"]:
        out.append(ids[at : at + len(sentences)])
        at += len(sentences)
    return {"input_ids": out}


def hf_child(spec_path: Path) -> None:
    """(b) in this fresh process: prints one JSON line with the timings (imports and tokenizer load untimed)."""
    spec = json.loads(spec_path.read_text())
    import datasets
    from transformers import AlbertTokenizer

    datasets.disable_progress_bars()
    tokenizer = AlbertTokenizer.from_pretrained(spec["tokenizer"])
    t0 = time.perf_counter()
    ds = datasets.Dataset.from_parquet(spec["files"], columns=["id", "sentences"], cache_dir=spec["cache"])
    t1 = time.perf_counter()
    encoded = ds.map(_hf_encode, batched=True, num_proc=spec["num_proc"], fn_kwargs={"tokenizer": tokenizer},
                     remove_columns=["sentences"], load_from_cache_file=False)  # fmt: skip
    t2 = time.perf_counter()
    encoded.to_parquet(spec["out"])
    t3 = time.perf_counter()
    result = {"seconds": t3 - t0, "load_s": t1 - t0, "map_s": t2 - t1, "write_s": t3 - t2, "rows": len(encoded),
              "tokenizer_class": f"{type(tokenizer).__module__}.{type(tokenizer).__name__}",
              "is_fast": bool(getattr(tokenizer, "is_fast", False))}  # fmt: skip
    if spec.get("check"):
        sample = spec["check"]
        got = tokenizer([s for s, _ in sample], add_special_tokens=False)["input_ids"]
        result["ids_equal_ours"] = sum(g == ids for g, (_, ids) in zip(got, sample, strict=True)) / len(
            sample
        )
    print(json.dumps(result))


def run_hf(files: list[str], tokenizer_dir: str, num_proc: int, check: list | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p1-hf-") as tmp:
        spec = {"files": files, "tokenizer": tokenizer_dir, "num_proc": num_proc, "cache": f"{tmp}/cache",
                "out": f"{tmp}/encoded.parquet", "check": check}  # fmt: skip
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HOME": f"{tmp}/hf_home", "HF_DATASETS_CACHE": f"{tmp}/cache"}  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.tokenize_job", "--hf-child", f"{tmp}/spec.json"],
            capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        if proc.returncode:
            raise RuntimeError(f"HF child failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["process_seconds"] = time.perf_counter() - t0
        result["out_bytes"] = Path(spec["out"]).stat().st_size
    return result


# --- main ------------------------------------------------------------------------------------------------------


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _median_range(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(cores: int, worker_counts: list[int]) -> dict[str, Any]:
    packages = ("ray", "datasets", "transformers", "tokenizers", "sentencepiece", "pyarrow", "numpy")
    return {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "cores_used": cores, **{p: _version(p) for p in packages},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_before": _load(),
        "threads": {
            **{f"ours_w{n}": f"{n} task(s) x {max(1, cores // n)} SentencePiece thread(s)" for n in worker_counts},
            "spm": "1 thread (x cores by arithmetic)", "hf": f"num_proc {cores}, TOKENIZERS_PARALLELISM=false",
            "shards_e2e": f"{cores} task(s)",
        },
        "unit_bytes": tokenize.UNIT_BYTES,
    }  # fmt: skip


def run_reps(variants: dict[str, Callable[[], dict[str, Any]]], reps: int, text_bytes: int) -> dict[str, Any]:
    """One untimed warm-up round (Ray workers, imports, page cache), then `reps` rounds of every variant in
    rotating order; returns the timed runs per variant and the load average at the start of each round."""
    names = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    load = []
    for rep in range(-1, reps):
        load.append(_load())
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            result = variants[name]()
            if rep >= 0:
                runs[name].append(result)
            print(f"rep {rep:2d} {name:18s} {text_bytes / result['seconds'] / MB:7.2f} MB/s "
                  f"({result['seconds']:.2f} s) load {_load()}", file=sys.stderr, flush=True)  # fmt: skip
    return {"runs": runs, "load_avg_per_rep": load}


def summarize(runs: dict[str, list[dict[str, Any]]], text_bytes: int, cores: int) -> dict[str, Any]:
    mbps = {name: [text_bytes / r["seconds"] / MB for r in rs] for name, rs in runs.items()}
    mbps["spm_x_cores"] = [v * cores for v in mbps["spm"]]
    mbps["ours"] = mbps[f"ours_w{cores}"]

    def ratio(a: str, b: str) -> dict[str, float]:
        return _median_range([x / y for x, y in zip(mbps[a], mbps[b], strict=True)])

    ratios = {
        "ours_vs_spm_x_cores": ratio("ours", "spm_x_cores"),
        "ours_vs_hf": ratio("ours", "hf"),
        "ours_w1_vs_spm": ratio("ours_w1", "spm"),
        "hf_vs_spm_x_cores": ratio("hf", "spm_x_cores"),
        "shards_e2e_vs_hf": ratio("shards_e2e", "hf"),
    }
    goal_met = {"ours_vs_spm_x_cores": ratios["ours_vs_spm_x_cores"]["median"] >= 0.8,
                "ours_vs_hf": ratios["ours_vs_hf"]["median"] >= 4}  # fmt: skip
    return {
        "goal_met": goal_met,
        "mb_per_s": {k: _median_range(v) for k, v in mbps.items()},
        "ratios": ratios,
    }


def scaling(home: Path, real: CorpusVersion, sizes: list[int], reps: int, cores: int,
            cfg: ShardsConfig) -> list[dict[str, Any]]:  # fmt: skip
    """Per input size: tokenize MB/s and peak memory, and the shards job's (SOP only) peak memory."""
    rows = []
    for mb in sizes:
        name = f"size{mb}"
        derived = derive_corpus(home, real, name, mb * int(MB))
        tok_runs = [run_tokenize(home, name, cores, memory=True) for _ in range(reps)]
        shard_runs = [
            run_shards(home, name, cores, cfg, fresh_tokens=False, memory=True) for _ in range(reps)
        ]
        _fresh(home, "tokenized", "shards")
        text = derived["text_bytes"]
        row = {
            "mb": mb, "text_bytes": text, "units": tok_runs[0]["files"],
            "tokenize_mb_per_s": _median_range([text / r["seconds"] / MB for r in tok_runs]),
            "shards_sop_mb_per_s": _median_range([text / r["seconds"] / MB for r in shard_runs]),
            "tokenize_rss_delta_mb": statistics.median(r["rss_delta_bytes"] for r in tok_runs) / 2**20,
            "shards_sop_rss_delta_mb": statistics.median(r["rss_delta_bytes"] for r in shard_runs) / 2**20,
            "tokenize_rss_peak_mb": statistics.median(r["rss_peak_bytes"] for r in tok_runs) / 2**20,
            "shards_sop_rss_peak_mb": statistics.median(r["rss_peak_bytes"] for r in shard_runs) / 2**20,
        }  # fmt: skip
        rows.append(row)
        print(f"scaling {json.dumps(row)}", file=sys.stderr, flush=True)
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, f = result["scaling"], result["mb_per_s"]
    mb = [r["mb"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    med = [r["tokenize_mb_per_s"]["median"] for r in rows]
    err = [[m - r["tokenize_mb_per_s"]["min"] for m, r in zip(med, rows, strict=True)],
           [r["tokenize_mb_per_s"]["max"] - m for m, r in zip(med, rows, strict=True)]]  # fmt: skip
    ax.errorbar(mb, med, yerr=err, marker="o", capsize=3, label=f"tokenize job, {result['cores']} workers")
    ax.errorbar(mb, [r["shards_sop_mb_per_s"]["median"] for r in rows], marker="s", capsize=3,
                label="shards job, SOP only (tokenized reused)")  # fmt: skip
    ax.axhline(f["spm_x_cores"]["median"], color="gray", ls="--", label="raw spm x cores (headline size)")
    ax.axhline(f["hf"]["median"], color="red", ls=":", label="HF datasets.map (headline size)")
    ax.set(xscale="log", xlabel="input MB of text", ylabel="MB/s", title="throughput vs input size")
    ax.set_xticks(mb, [str(m) for m in mb])
    ax.legend(fontsize=7)
    ax = axes[1]
    workers = result["config"]["workers"]
    for key, label in (("ours_w{}", "tokenize job"),):
        values = [f[key.format(n)]["median"] for n in workers]
        ax.plot(workers, values, marker="o", label=label)
    ax.axhline(f["spm"]["median"], color="gray", ls="--", label="raw spm, 1 core")
    ax.set(
        xlabel="workers",
        ylabel="MB/s",
        title=f"tokenize job vs workers ({result['inputs']['bench']['text_bytes'] / MB:.1f} MB)",
    )
    ax.set_xticks(workers)
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.plot(mb, [r["tokenize_rss_delta_mb"] for r in rows], marker="o", label="tokenize job")
    ax.plot(mb, [r["shards_sop_rss_delta_mb"] for r in rows], marker="s", label="shards job (SOP only)")
    ax.set(xscale="log", xlabel="input MB of text", ylabel="peak RSS growth, MB (driver + Ray processes)",
           title="memory vs input size")  # fmt: skip
    ax.set_xticks(mb, [str(m) for m in mb])
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 MB headline, sizes 1-4 MB, 2 repetitions")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--mb", type=float, default=None, help="MB of text at the headline (default 8, quick 2)"
    )
    parser.add_argument("--hf-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_child:
        hf_child(args.hf_child)
        return
    reps = args.reps or (2 if args.quick else 3)
    target = int((args.mb or (2 if args.quick else 8)) * MB)
    sizes = [1, 2, 4] if args.quick else [1, 2, 4, 8, 16, 32]
    cores = len(os.sched_getaffinity(0))
    worker_counts = sorted({1, 2, cores})
    cfg = ShardsConfig(max_seq_len=128, dupe_factor=1, masking="static")
    env = environment(cores, worker_counts)

    with tempfile.TemporaryDirectory(prefix="p1-home-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        ensure_ray()
        env["ray_start_seconds"] = round(time.perf_counter() - t0, 2)
        env["ray_num_cpus"] = ray.cluster_resources().get("CPU")
        inputs = prepare(home, target)
        print(f"input: {json.dumps(inputs['bench'])}", file=sys.stderr, flush=True)

        files = [str(p) for p in resolve_version(home, "bench").doc_files()]
        tok, tok_manifest = load_tokenizer(home, TOKENIZER)
        docs = pa.concat_tables(pq.read_table(f, columns=["sentences"]) for f in files)
        raw = pc.list_flatten(docs["sentences"]).fill_null("").to_pylist()
        text_bytes = sum(len(s.encode()) for s in raw)
        sentences = [preprocess_text(s, tok.lowercase) for s in raw]  # (a) gets exactly what ours encodes
        sp = spm.SentencePieceProcessor(model_file=str(Path(tok_manifest["path"]) / "spiece.model"))
        sample = raw[::97][:1000]
        check = [[s, ids] for s, ids in zip(sample, tok.encode(sample), strict=True)]
        assert sp.encode(sentences[::97][:1000], out_type=int) == [ids for _, ids in check]
        units = tokenize.plan_units(files)
        inputs["units"] = len(units)

        variants: dict[str, Callable[[], dict[str, Any]]] = {
            **{f"ours_w{n}": (lambda n=n: run_tokenize(home, "bench", n)) for n in worker_counts},
            "spm": lambda: run_spm(sp, sentences),
            "hf": lambda: run_hf(files, tok_manifest["path"], cores, check),
            "shards_e2e": lambda: run_shards(home, "bench", cores, cfg, fresh_tokens=True),
            "ray_floor_tasks": lambda: run_ray_floor(units, cores, actors=False),
            "ray_floor_actors": lambda: run_ray_floor(units, cores, actors=True),
        }
        timed = run_reps(variants, reps, text_bytes)
        runs = timed["runs"]
        for r in runs[f"ours_w{cores}"] + runs["shards_e2e"]:
            assert r["text_bytes"] == text_bytes, (r["text_bytes"], text_bytes)
        summary = summarize(runs, text_bytes, cores)
        curve = scaling(home, resolve_version(home, "real"), sizes, reps, cores, cfg)
        env["load_avg_after"] = _load()
        env["load_avg_per_rep"] = timed["load_avg_per_rep"]
        env["hf_tokenizer"] = {k: runs["hf"][0][k] for k in ("tokenizer_class", "is_fast", "ids_equal_ours")}
    ray.shutdown()

    result = {
        "goal": "tokenize job >= 0.8 x (raw spm x cores); >= 4 x (HF datasets.map)",
        **summary,
        "quick": args.quick,
        "reps": reps,
        "cores": cores,
        "env": env,
        "inputs": inputs,
        "config": {**cfg.resolved(), "workers": worker_counts, "headline_workers": cores},
        "scaling": curve,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tokenize_job.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "tokenize_job.md").write_text(markdown(result, cores) + "\n")
    plot(result, RESULTS / "tokenize_scaling.png")
    print(markdown(result, cores))


def markdown(r: dict[str, Any], cores: int) -> str:
    f, q = r["mb_per_s"], r["ratios"]
    fmt = lambda d: f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})"  # noqa: E731
    rows = [
        (f"**ours: tokenize job, workers {cores} (default)**", "ours",
         "plan units, a Ray task per row group: read, encode, Arrow lists, zstd Parquet; sha256, manifest, rename (Ray up)"),
        *((f"ours: tokenize job, workers {n}", f"ours_w{n}", f"same, {n} task(s) at a time")
          for n in r["config"]["workers"] if n != cores),
        ("(a) raw spm 1 thread x cores", "spm_x_cores", "C++ encode of preprocessed sentences only, x cores"),
        ("raw spm 1 thread", "spm", "the same, one core"),
        (f"(b) HF datasets.map num_proc {cores}", "hf", "from_parquet + map(AlbertTokenizer) + to_parquet"),
        (f"shards job end to end, workers {cores} (not P1)", "shards_e2e",
         "tokenize job + pool + SOP pairs + static masking + zstd Parquet, nothing reused"),
        ("Ray Data fixed cost: tasks, no-op", "ray_floor_tasks", "the tokenize job's plan, map_batches with tasks"),
        ("Ray Data fixed cost: actor pool, no-op", "ray_floor_actors", f"the same with {cores} actors"),
    ]  # fmt: skip
    lines = ["| figure | includes | MB/s median (min-max) |", "|---|---|---|"]
    lines += [f"| {label} | {what} | {fmt(f[key])} |" for label, key, what in rows]
    goals = {"ours_vs_spm_x_cores": ">= 0.8", "ours_vs_hf": ">= 4"}
    lines += ["", "| ratio (per repetition) | median (min-max) | goal |", "|---|---|---|"]
    for key, value in q.items():
        goal = goals.get(key, "")
        if goal:
            goal += " met" if r["goal_met"][key] else " **missed**"
        lines.append(f"| {key} | {fmt(value)} | {goal} |")
    seconds = {k: statistics.median(run["seconds"] for run in r["runs"][k]) for k in ("ray_floor_tasks",
               "ray_floor_actors")}  # fmt: skip
    lines.append(f"\nRay Data fixed cost for {r['inputs']['units']} units: tasks {seconds['ray_floor_tasks']:.2f} s, "
                 f"actor pool {seconds['ray_floor_actors']:.2f} s (medians).")  # fmt: skip
    lines += ["", "Scaling (workers " + str(cores) + "; memory: peak summed RSS growth of driver + Ray processes):", "",
              "| MB | units | tokenize MB/s | shards SOP-only MB/s | tokenize peak RSS growth MB | shards peak RSS growth MB |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row in r["scaling"]:
        lines.append(f"| {row['mb']} | {row['units']} | {fmt(row['tokenize_mb_per_s'])} | "
                     f"{fmt(row['shards_sop_mb_per_s'])} | {row['tokenize_rss_delta_mb']:.0f} | "
                     f"{row['shards_sop_rss_delta_mb']:.0f} |")  # fmt: skip
    hf = {k: statistics.median(run[k] for run in r["runs"]["hf"]) for k in ("load_s", "map_s", "write_s")}
    lines.append(f"\nHF medians: from_parquet {hf['load_s']:.2f} s, map {hf['map_s']:.2f} s, "
                 f"to_parquet {hf['write_s']:.2f} s.")  # fmt: skip
    e, i = r["env"], r["inputs"]["bench"]
    lines.append(
        f"\n{i['text_bytes'] / MB:.2f} MB of sentence text ({i['documents']} documents, {i['sentences']} sentences, "
        f"{i['copies']} copies of WikiText-2 valid + zhwiki_bert_sampled, {r['inputs']['units']} units), vocab "
        f"{r['inputs']['vocab_size']}; shards: max_seq_len {r['config']['max_seq_len']}, dupe_factor "
        f"{r['config']['dupe_factor']}, static masking; {r['reps']} interleaved repetitions after a warm-up; "
        f"cores {cores}, Ray CPUs {e['ray_num_cpus']} (start {e['ray_start_seconds']} s, not timed); threads: "
        f"{'; '.join(f'{k} {v}' for k, v in e['threads'].items())}; HF tokenizer {e['hf_tokenizer']}; "
        f"load {e['load_avg_before']} -> {e['load_avg_after']} (per repetition {e['load_avg_per_rep']})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
