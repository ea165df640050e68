"""SentencePiece job: a deterministic sample of a corpus version's sentences -> `tokenizers/<name>/`.

The ALBERT recipe trains one unigram model on the pretraining text (`albert_core.tokenizer` holds the recipe).
A corpus can be far larger than SentencePiece should see, so the job trains on a sample chosen by a hash of
(seed, document id, sentence index): the `sample_sentences` smallest hashes, read and filtered by Ray Data. The
sample depends only on the corpus and the seed, never on block layout, worker count or read order, so the same
inputs give a byte-identical `spiece.model`.

    tokenizers/<name>/   spiece.model  spiece.vocab  tokenizer.json  tokenizer_config.json  albert_tokenizer.json
                         manifest.json   (corpus version, sample, parameters, sha256; written last, folder renamed
                                          into place)
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from albert_core.errors import UserError
from albert_core.storage import (
    atomic_directory,
    file_hashes,
    read_json,
    sha256_file,
    validate_name,
    write_json,
)
from albert_core.tokenizer import SentencePieceTokenizer
from data_jobs.corpus import CorpusVersion, resolve_version
from data_jobs.ray_runtime import ensure_ray

MANIFEST = "manifest.json"
_U64 = 1 << 64


@dataclass(frozen=True)
class TokenizerJobConfig:
    vocab_size: int = 30000  # the published ALBERT vocabulary
    lowercase: bool = True  # the reference's uncased models
    sample_sentences: int = 10_000_000  # at most this many sentences reach SentencePiece
    seed: int = 0  # chooses the sample

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(value, bool):
                    raise UserError(f"{f.name} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{f.name} must be an integer, got {value!r}")
        if self.sample_sentences < 1:
            raise UserError(f"sample_sentences must be >= 1, got {self.sample_sentences}")
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}")


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


def _count_sentences(batch: pa.Table) -> pa.Table:
    return pa.table({"sentences": [int(pc.sum(pc.list_value_length(batch["sentences"])).as_py() or 0)]})


def _sample_batch(batch: pa.Table, seed: int, threshold: int) -> pa.Table:
    """The non-empty sentences of `batch` whose key is below `threshold`, with their key and position."""
    sentences = batch["sentences"].combine_chunks()
    lengths = pc.list_value_length(sentences).fill_null(0).to_numpy(zero_copy_only=False)
    flat = sentences.flatten().fill_null("")
    parent, index = _positions(lengths)
    keys = _sentence_keys(seed, batch["id"].to_pylist(), parent, index)
    keep = (keys < np.uint64(threshold)) & (pc.utf8_length(flat).to_numpy(zero_copy_only=False) > 0)
    return pa.table(
        {
            "key": pa.array(keys[keep], pa.uint64()),
            "doc_id": batch["id"].combine_chunks().take(pa.array(parent[keep])),
            "index": pa.array(index[keep], pa.int32()),
            "sentence": flat.filter(pa.array(keep)),
        }
    )


def _threshold(k: int, total: int) -> int:
    """Key threshold that lets through about k + 6σ sentences: enough that the k smallest keys are all below it
    except with negligible probability, few enough that the driver holds little more than the sample."""
    expected = k + 6 * math.sqrt(k) + 100
    return _U64 - 1 if expected >= total else int(expected / total * _U64)


def sample_sentences(source: CorpusVersion, cfg: TokenizerJobConfig) -> tuple[list[str], int]:
    """(the sample in (document id, sentence index) order, number of sentences in the corpus version)."""
    files = [str(p) for p in source.doc_files()]
    if not files:
        raise UserError(f"corpus {source.id} has no document files")
    ensure_ray()
    docs = ray.data.read_parquet(files, columns=["id", "sentences"])
    total = docs.map_batches(_count_sentences, batch_format="pyarrow").sum("sentences") or 0
    if not total:
        raise UserError(f"corpus {source.id} has no sentences to train a tokenizer on")
    below = docs.map_batches(
        _sample_batch,
        fn_kwargs={"seed": cfg.seed, "threshold": _threshold(cfg.sample_sentences, total)},
        batch_format="pyarrow",
    )
    tables = list(below.iter_batches(batch_format="pyarrow", batch_size=None))
    if not tables:
        raise UserError(f"corpus {source.id} has only empty sentences")
    # (key, doc_id, index) is a total order, so ties in the key cannot make the sample depend on arrival order.
    sample = (
        pa.concat_tables(tables)
        .sort_by([("key", "ascending"), ("doc_id", "ascending"), ("index", "ascending")])
        .slice(0, cfg.sample_sentences)
        .sort_by([("doc_id", "ascending"), ("index", "ascending")])
    )
    return sample["sentence"].to_pylist(), int(total)


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

    Retraining under an existing name replaces that tokenizer atomically (shards built with the old one record
    its sha256, so they are not silently mixed up with the new one).
    """
    started = time.perf_counter()
    name = corpus if name is None else name
    target = tokenizer_dir(home, name)
    if target.exists() and not (target / MANIFEST).is_file():
        raise UserError(f"{target} exists but is not a trained tokenizer; remove it or choose another --name")
    source = resolve_version(home, corpus, version)
    sentences, total = sample_sentences(source, cfg)
    tokenizer = SentencePieceTokenizer.train(
        sentences, vocab_size=cfg.vocab_size, lowercase=cfg.lowercase, seed=cfg.seed
    )
    manifest = {
        "name": name,
        "corpus": source.id,
        "corpus_manifest_sha256": sha256_file(source.path / MANIFEST),
        "sample": {"sentences": len(sentences), "corpus_sentences": total},
        "parameters": asdict(cfg),
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
        "sentences_sampled": len(sentences),
        "corpus_sentences": total,
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
