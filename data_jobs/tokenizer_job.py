"""SentencePiece job: a deterministic sample of a corpus version's sentences -> `tokenizers/<name>/`.

The ALBERT recipe trains one unigram model on the pretraining text (`albert_core.tokenizer` holds the recipe).
A corpus can be far larger than SentencePiece should see, so the job trains on a sample chosen by a hash of
(seed, document id, sentence index): the `sample_sentences` smallest hashes, read and filtered by Ray Data. The
sample depends only on the corpus and the seed, never on block layout, worker count or read order, so the same
inputs give a byte-identical `spiece.model`.

Memory is bounded by the settings, not the corpus: Ray tasks write the candidate sentences to Parquet, the
driver picks the sample from their key columns and streams it to a text file, and SentencePiece trains from that
file in a Ray task that asks for the memory the trainer is estimated to need (a measured linear model in the
sample's bytes and sentences). The sample is capped so that estimate fits the largest node (or `max_memory_gb`).

    tokenizers/<name>/   spiece.model  spiece.vocab  tokenizer.json  tokenizer_config.json  albert_tokenizer.json
                         manifest.json   (corpus version, sample, parameters, sha256; written last, folder renamed
                                          into place)
"""

from __future__ import annotations

import hashlib
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from albert_core.errors import UserError
from albert_core.storage import (
    atomic_directory,
    build_folder,
    file_hashes,
    read_json,
    sha256_file,
    validate_name,
    write_json,
)
from albert_core.tokenizer import SentencePieceTokenizer, preprocess_arrow
from data_jobs.config import TokenizerJobConfig
from data_jobs.corpus import CorpusVersion, resolve_version
from data_jobs.ray_runtime import ensure_ray, require_resources, run_tasks

MANIFEST = "manifest.json"
_U64 = 1 << 64

# Peak RSS of SentencePiece training (`SentencePieceTokenizer.train_file`, unigram, vocab 30,000) as a linear model
# in the sample's bytes and sentences. Measured 2026-12-06 on this machine (2 cores, 24 GiB), unique sentences built
# from the shared corpora, peak read with getrusage(RUSAGE_CHILDREN) of a fresh trainer process:
#     100,000 sentences,  11.9 MB ->  279 MB        300,000 sentences, 36.0 MB -> 759 MB
#     300,000 sentences, 107.9 MB -> 2124 MB      1,000,000 sentences, 119.9 MB -> 2396 MB
# Least squares: 19.1 bytes per sample byte + 63 per sentence + 49 MB (residuals under 5 MB); the suffix array
# of the seed-piece search dominates. Rounded up, and the fixed part covers a Ray worker (~200 MB with pyarrow),
# so the model over-estimates these runs by 18-98%. The 1 GB run (7.5 M sentences, 19.6 GB including the
# old driver's sentence list) fits it too.
SPM_BYTES_PER_SAMPLE_BYTE = 20
SPM_BYTES_PER_SENTENCE = 150
SPM_FIXED_BYTES = 300_000_000
# Candidates kept beyond what the budget fits at the corpus's mean sentence size (sampled sentences vary in size).
CANDIDATE_MARGIN = 1.5
MEMORY_SHARE = 0.8  # of the memory available, what the trainer may plan for (the estimate is not a bound)


def tokenizer_dir(home: Path, name: str) -> Path:
    return home / "tokenizers" / validate_name(name, "tokenizer name")


# --- sampling ----------------------------------------------------------------------------------------------------


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective scramble of uint64 values (arithmetic wraps, as intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the flattened values of a list column: the row of each value and its index within that row."""
    parent = np.repeat(np.arange(len(lengths)), lengths)
    index = np.arange(parent.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return parent, index


def _sentence_keys(seed: int, doc_ids: list[str], parent: np.ndarray, index: np.ndarray) -> np.ndarray:
    """uint64 sampling key of each sentence (document `doc_ids[parent]`, position `index`): a function of
    (seed, document id, sentence index) only. One blake2b per document, then a vectorised mix with the index."""
    doc_keys = np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}\x00{d}".encode(), digest_size=8).digest(), "little")
            for d in doc_ids
        ],
        dtype=np.uint64,
    )
    return _mix64(doc_keys[parent] ^ _mix64(index.astype(np.uint64)))


def _count_sentences(path: str) -> tuple[int, int]:
    """Sentences and their UTF-8 bytes in one docs file (a Ray task)."""
    sentences = pc.list_flatten(pq.read_table(path, columns=["sentences"]).column("sentences"))
    return len(sentences), int(pc.sum(pc.binary_length(sentences)).as_py() or 0)


def _write_file_candidates(path: str, seed: int, threshold: int, out: str) -> None:
    """The candidates of one docs file, to `out` (a Ray task)."""
    pq.write_table(_sample_batch(pq.read_table(path, columns=["id", "sentences"]), seed, threshold), out)


def _sample_batch(batch: pa.Table, seed: int, threshold: int) -> pa.Table:
    """The non-empty sentences of `batch` whose key is below `threshold`, with their key, position and size."""
    sentences = batch["sentences"].combine_chunks()
    lengths = pc.list_value_length(sentences).fill_null(0).to_numpy(zero_copy_only=False)
    flat = sentences.flatten().fill_null("")
    parent, index = _positions(lengths)
    keys = _sentence_keys(seed, batch["id"].to_pylist(), parent, index)
    nbytes = pc.binary_length(flat).to_numpy(zero_copy_only=False)
    keep = (keys < np.uint64(threshold)) & (nbytes > 0)
    return pa.table(
        {
            "key": pa.array(keys[keep], pa.uint64()),
            "doc_id": batch["id"].combine_chunks().take(pa.array(parent[keep])),
            "index": pa.array(index[keep], pa.int32()),
            "nbytes": pa.array(nbytes[keep], pa.int32()),
            "sentence": flat.filter(pa.array(keep)),
        }
    )


def _threshold(k: int, total: int) -> int:
    """Key threshold that lets through about k + 6σ sentences: enough that the k smallest keys are all below it
    except with negligible probability, few enough that the candidates are little more than the sample."""
    expected = k + 6 * math.sqrt(k) + 100
    return _U64 - 1 if expected >= total else int(expected / total * _U64)


def _write_candidates(
    source: CorpusVersion, cfg: TokenizerJobConfig, folder: Path, budget: int | None = None
) -> int:
    """Ray tasks write every sentence below the key threshold to `folder/*.parquet`; returns the number of
    sentences in the corpus version. Nothing but counts passes through the driver.

    With a memory `budget`, the threshold is set for the sentences that can fit it (from the corpus's mean
    sentence size, with a margin), so the candidates, and what the driver reads of them, stay near what the
    trainer can take whatever the corpus size; `_cap` then fits the sample exactly."""
    files = [str(p) for p in source.doc_files()]
    if not files:
        raise UserError(f"corpus {source.id} has no document files")
    ensure_ray()
    counts = run_tasks(_count_sentences, [(f,) for f in files], "tokenizer: count")
    total, total_bytes = (sum(c) for c in zip(*counts, strict=True))
    if not total:
        raise UserError(f"corpus {source.id} has no sentences to train a tokenizer on")
    k = cfg.sample_sentences
    if budget is not None:
        per_sentence = estimate_training_memory(total_bytes / total + 1, 1) - SPM_FIXED_BYTES
        k = min(k, int(CANDIDATE_MARGIN * max(0, budget - SPM_FIXED_BYTES) / per_sentence) + 1)
    folder.mkdir(parents=True, exist_ok=True)
    threshold = _threshold(k, total)
    calls = [(f, cfg.seed, threshold, str(folder / f"part-{i:06d}.parquet")) for i, f in enumerate(files)]
    run_tasks(_write_file_candidates, calls, "tokenizer: sample")
    return total


def _choose(folder: Path, k: int) -> pa.Table:
    """The k candidates with the smallest keys, in key order: (file, row) where each one's sentence is, plus
    doc_id, index and nbytes. Reads only these columns, as Arrow (about 30 bytes per candidate plus its document
    id), never the sentences and never a Python object per candidate."""
    parts = []
    for number, path in enumerate(sorted(folder.glob("*.parquet"))):
        part = pq.read_table(path, columns=["key", "doc_id", "index", "nbytes"])
        parts.append(
            part.append_column("file", pa.array(np.full(len(part), number, np.int32))).append_column(
                "row", pa.array(np.arange(len(part), dtype=np.int64))
            )
        )
    candidates = pa.concat_tables(parts) if parts else None
    if candidates is None or not len(candidates):
        raise UserError("the corpus has only empty sentences")
    # (key, doc_id, index) is a total order, so ties in the key cannot make the sample depend on arrival order.
    order = [("key", "ascending"), ("doc_id", "ascending"), ("index", "ascending")]
    return candidates.take(pc.select_k_unstable(candidates, k=min(k, len(candidates)), sort_keys=order))


def _sentences_in_order(folder: Path, chosen: pa.Table, batch: int = 1 << 16) -> Iterator[pa.Array]:
    """The raw sentences of `chosen` in (document id, sentence index) order, `batch` at a time.

    Each candidate file is read once for the chosen rows; the driver then holds the sample as one Arrow string
    array (about its text size), never as Python strings beyond one batch."""
    files = chosen["file"].to_numpy()
    rows = chosen["row"].to_numpy()
    by_location = np.lexsort((rows, files))  # the order in which `texts` below holds the sentences
    paths = sorted(folder.glob("*.parquet"))
    texts = pa.chunked_array(
        [
            pq.read_table(paths[f], columns=["sentence"])["sentence"].take(
                pa.array(np.sort(rows[files == f]))
            )
            for f in np.unique(files)
        ],
        pa.string(),
    )
    where = np.empty(len(chosen), np.int64)
    where[by_location] = np.arange(len(chosen))
    order = pc.sort_indices(chosen, [("doc_id", "ascending"), ("index", "ascending")]).to_numpy()
    for start in range(0, len(order), batch):
        yield texts.take(pa.array(where[order[start : start + batch]])).combine_chunks()


def sample_sentences(source: CorpusVersion, cfg: TokenizerJobConfig) -> tuple[list[str], int]:
    """(the sample in (document id, sentence index) order, number of sentences in the corpus version), as a
    list for inspection on small local corpora (the candidates go to a local temporary folder); the job streams
    the same sample to a file under ALBERT_HOME instead."""
    with tempfile.TemporaryDirectory() as tmp:
        total = _write_candidates(source, cfg, Path(tmp))
        chosen = _choose(Path(tmp), cfg.sample_sentences)
        return [s for part in _sentences_in_order(Path(tmp), chosen) for s in part.to_pylist()], total


def _write_sample(folder: Path, chosen: pa.Table, lowercase: bool, path: Path) -> tuple[int, int]:
    """Write the chosen sentences, preprocessed for SentencePiece, one per line in (document id, sentence
    index) order (the order `train` saw them in, so the model stays byte-identical); (lines, bytes)."""
    lines = 0
    with path.open("wb") as out:
        for part in _sentences_in_order(folder, chosen):
            texts = [t for t in preprocess_arrow(part, lowercase) if t]
            if texts:
                out.write(("\n".join(texts) + "\n").encode("utf-8"))
            lines += len(texts)
    return lines, path.stat().st_size


# --- memory ------------------------------------------------------------------------------------------------------


def estimate_training_memory(sample_bytes: int | np.ndarray, sentences: int | np.ndarray) -> int | np.ndarray:
    """Peak RSS of the SentencePiece trainer for a sample of this size (the measured model above)."""
    return SPM_BYTES_PER_SAMPLE_BYTE * sample_bytes + SPM_BYTES_PER_SENTENCE * sentences + SPM_FIXED_BYTES


def _node_memory() -> int:
    """The `memory` resource of the largest live Ray node: the most one task can ask for."""
    return int(max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0))


def _memory_budget(cfg: TokenizerJobConfig) -> int:
    """Bytes the trainer may plan for: `max_memory_gb` if given, else a share of the largest node's memory (on
    a local runtime also of this machine's memory available now, which the running driver already uses)."""
    if cfg.max_memory_gb is not None:
        return int(cfg.max_memory_gb * 1e9)
    memory = _node_memory()
    if not os.environ.get("RAY_ADDRESS"):
        memory = min(memory, psutil.virtual_memory().available)
    return int(memory * MEMORY_SHARE)


def _cap(chosen: pa.Table, budget: int, wanted: int) -> int:
    """How many of `chosen` (in key order, so any prefix is itself a uniform sample) fit `budget`; `wanted`: the
    sample size asked for (for the message)."""
    nbytes = np.cumsum(chosen["nbytes"].to_numpy().astype(np.int64) + 1)  # + the newline
    need = estimate_training_memory(nbytes, np.arange(1, len(nbytes) + 1))
    fits = int(np.searchsorted(need, budget, side="right"))
    if not fits:
        raise UserError(
            f"tokenizer: {_gb(budget)} of memory is not enough to train on even one sentence "
            f"(the trainer alone needs about {_gb(SPM_FIXED_BYTES)}); pass a larger --max-memory-gb"
        )
    if fits < wanted:
        per_sentence = int(need[fits - 1]) / fits
        print(
            f"tokenizer: sample capped at {fits:,} of {wanted:,} sentences to fit {_gb(budget)} "
            f"(estimated {per_sentence / 1e3:.1f} KB per sentence); pass --max-memory-gb to change",
            file=sys.stderr,
        )
    return fits


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


@ray.remote(num_cpus=1, max_retries=0)
def _train_task(path: str, vocab_size: int, lowercase: bool) -> tuple[bytes, str, int]:
    """SentencePiece on the sample file, wherever Ray placed this task: (model bytes, node id, peak RSS of the
    worker process). One CPU reserved: the trainer's thread count is fixed for reproducibility (see
    DEFAULT_TRAIN_THREADS). No retries: training is deterministic, so a second try would fail the same way."""
    model = SentencePieceTokenizer.train_file(path, vocab_size=vocab_size, lowercase=lowercase).model_bytes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return model, ray.get_runtime_context().get_node_id(), peak


def _train_on_ray(
    path: Path, cfg: TokenizerJobConfig, request: int
) -> tuple[SentencePieceTokenizer, str, int]:
    """Train in a Ray task that asks for `request` bytes of memory, so that on a cluster it runs on a node
    that has them. Fails at once, rather than waiting forever, when no node is that large (with
    ALBERT_AUTOSCALER=1 it says so and waits for the autoscaler, `require_resources`)."""
    try:
        require_resources("tokenizer training", 1, {"CPU": 1, "memory": request})
    except UserError as e:
        raise UserError(f"{e}; pass a smaller --max-memory-gb or --sample-sentences") from None
    task = _train_task.options(memory=request).remote(str(path), cfg.vocab_size, cfg.lowercase)
    try:
        model, node, peak = ray.get(task)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UserError):
            raise UserError(str(e.cause)) from None
        raise
    except (ray.exceptions.OutOfMemoryError, ray.exceptions.WorkerCrashedError) as e:
        raise UserError(
            f"tokenizer: the training task died ({type(e).__name__}) with {_gb(request)} requested; "
            f"pass a smaller --max-memory-gb or --sample-sentences"
        ) from None
    return SentencePieceTokenizer.from_bytes(model, cfg.lowercase), node, peak


# --- the job -----------------------------------------------------------------------------------------------------


def train_tokenizer(
    corpus: str,
    *,
    home: Path,
    version: int | None = None,
    name: str | None = None,
    cfg: TokenizerJobConfig = TokenizerJobConfig(),
) -> dict[str, Any]:
    """Train a SentencePiece vocabulary on a sample of a corpus version; return the summary the CLI prints.

    The sample goes from Ray tasks to Parquet files, then to a text file, both in a temporary folder under
    ALBERT_HOME, and the training task reads that file: on a cluster, ALBERT_HOME must be shared storage (as
    it already must be for corpora and shards). Retraining under an existing name replaces that tokenizer
    atomically (shards built with the old one record its sha256, so they are not silently mixed up with the
    new one).
    """
    started = time.perf_counter()
    name = corpus if name is None else name
    target = tokenizer_dir(home, name)
    if target.exists() and not (target / MANIFEST).is_file():
        raise UserError(f"{target} exists but is not a trained tokenizer; remove it or choose another --name")
    source = resolve_version(home, corpus, version)
    with build_folder(target.parent, f".sample-{name}.") as tmp:
        tmp = tmp.resolve()
        ensure_ray()
        budget = _memory_budget(cfg)  # from the Ray nodes' memory
        total = _write_candidates(source, cfg, tmp / "candidates", budget)
        chosen = _choose(tmp / "candidates", cfg.sample_sentences)
        wanted = min(cfg.sample_sentences, total)
        fits = _cap(chosen, budget, wanted)
        capped = fits < wanted
        sample = tmp / "sample.txt"
        lines, sample_bytes = _write_sample(tmp / "candidates", chosen.slice(0, fits), cfg.lowercase, sample)
        del chosen  # the driver holds nothing of the sample while the trainer runs
        request = int(estimate_training_memory(sample_bytes, lines))
        tokenizer, node, peak = _train_on_ray(sample, cfg, request)
    memory = {
        "max_memory_gb": cfg.max_memory_gb,
        "budget_bytes": budget,
        "estimated_bytes": request,
        "sample_bytes": sample_bytes,
        "capped": capped,
        "trainer_node": node,  # the Ray node that ran the training task
        # of the worker process that trained (a reused worker's earlier tasks count too): checks the estimate
        "trainer_peak_rss_bytes": peak,
    }
    manifest = {
        "name": name,
        "corpus": source.id,
        "corpus_manifest_sha256": sha256_file(source.path / MANIFEST),
        "sample": {"sentences": fits, "corpus_sentences": total},
        "parameters": {k: v for k, v in asdict(cfg).items() if k != "max_memory_gb"},
        "memory": memory,
        "vocab_size": tokenizer.vocab_size,
        "sha256": tokenizer.sha256,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with atomic_directory(target, replace=True) as tmp:
        tokenizer.save(tmp)  # tmp is empty, so save may replace it with its own complete folder
        manifest["files"] = file_hashes(tmp)
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        write_json(tmp / MANIFEST, manifest)
    return {
        "name": name,
        "path": str(target),
        "vocab_size": tokenizer.vocab_size,
        "lowercase": tokenizer.lowercase,
        "corpus": source.id,
        "sentences_sampled": fits,
        "corpus_sentences": total,
        "memory": memory,
        "sha256": tokenizer.sha256,
        "seconds": manifest["seconds"],
    }


def load_tokenizer(home: Path, name: str) -> tuple[SentencePieceTokenizer, dict[str, Any]]:
    """A trained tokenizer and its manifest (plus `path`, the folder it was loaded from)."""
    folder = tokenizer_dir(home, name)
    if not (folder / MANIFEST).is_file():
        raise UserError(
            f"tokenizer {name!r} not found under {home / 'tokenizers'}; "
            f"train it with `albert tokenizer train --corpus CORPUS --name {name}`"
        )
    tokenizer = SentencePieceTokenizer.load(folder)
    manifest = read_json(folder / MANIFEST)
    if manifest.get("sha256") != tokenizer.sha256:
        raise UserError(f"{folder / MANIFEST} does not match {folder / 'spiece.model'} (sha256 differs)")
    return tokenizer, {**manifest, "path": str(folder)}
