"""SentencePiece tokenizer for ALBERT: train, encode, save a folder that `transformers` can read.

Follows the ALBERT recipe (google-research/albert):
- README "SentencePiece": a unigram model with `--pad_id=0 --unk_id=1 --eos_id=-1 --bos_id=-1
  --control_symbols=[CLS],[SEP],[MASK]`, so ids 0..4 are `<pad> <unk> [CLS] [SEP] [MASK]` as in the published
  `spiece.model`. Not taken over: its `--user_defined_symbols="(,),\\",-,.,–,£,€"` and `--character_coverage=0.99995`
  (ours defaults to SentencePiece's 0.9995).
- `tokenization.preprocess_text`: whitespace collapsed, optional lower-casing, applied before training and encoding.
  Where we differ from the reference: we keep accents (the reference strips combining marks after NFKD) and map
  "``" and "''" to '"' — both as transformers' `AlbertTokenizer` does with `keep_accents=True`, so the folder we
  save tokenizes identically there. The reference `encode_pieces` also re-splits pieces such as "▁1990," into
  "▁1990" + ","; we use SentencePiece's segmentation unchanged, as transformers 5.x does.
- `create_pretraining_data._is_start_piece_sp`: which pieces start a word (`word_start_mask`).

Saved folder: `spiece.model` (the serialized proto), `spiece.vocab` (piece<TAB>score, as `spm_train` writes),
`tokenizer.json` + `tokenizer_config.json` (for `transformers.AlbertTokenizer.from_pretrained(folder)`) and
`albert_tokenizer.json` (our metadata: casing, vocab size, sha256 of the model).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from albert_core.errors import UserError
from albert_core.storage import atomic_directory, write_bytes

MODEL_FILE = "spiece.model"
VOCAB_FILE = "spiece.vocab"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
META_FILE = "albert_tokenizer.json"
META_FORMAT = 1

PAD, UNK, CLS, SEP, MASK = "<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_PIECES = (PAD, UNK, CLS, SEP, MASK)  # ids 0..4, in this order

# SentencePiece's own default. The trained scores depend on the thread count (the EM sums per-thread partial
# counts), so a fixed default keeps the model a function of the inputs, not of the machine's core count.
DEFAULT_TRAIN_THREADS = 16

_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")

# `_is_start_piece_sp` (google-research/albert create_pretraining_data.py): pieces made only of these characters
# (lower-cased) continue a word unless they start with "▁" or "<" or are one punctuation character. The reference
# string lists '"' twice and leaves out "'", "<", "=", ">"; its "€"/"£" entries are bytes that never match a str
# piece in Python 3 (those pieces start words anyway, as non-ASCII). Kept exactly.
_REF_PUNCT = frozenset('!"#$%&"()*+,-./:;?@[\\]^_`{|}~')
_REF_CONTINUATION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz") | _REF_PUNCT


def preprocess_text(text: str, lowercase: bool) -> str:
    """Normalise one line the way ALBERT does before SentencePiece (see module docstring)."""
    text = " ".join(text.strip().split())
    text = text.replace("``", '"').replace("''", '"')
    return text.lower() if lowercase else text


# The characters other than " " that Python's str.split() and str.strip() treat as whitespace (str.isspace).
_NON_SPACE_WHITESPACE = (
    r"\t-\r\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
)
# What `" ".join(text.split())` changes: a run of two or more, or a single one that is not " ". Matching only
# these (not every single space) makes the RE2 pass ~10x faster than one over `\s+`-like runs (measured).
_WHITESPACE = rf"[ {_NON_SPACE_WHITESPACE}]{{2,}}|[{_NON_SPACE_WHITESPACE}]"


def preprocess_arrow(texts: Any, lowercase: bool) -> list[str]:
    """`preprocess_text` of every string of a pyarrow string array (nulls as ""), with the same result: the
    whitespace and quote rewrites run in pyarrow.compute over the whole array instead of per string in Python.
    Lower-casing stays Python's `str.lower` (Arrow's utf8_lower lacks its special cases, e.g. final sigma)."""
    import pyarrow.compute as pc  # pyarrow only where an Arrow array is encoded

    out = pc.replace_substring_regex(texts.fill_null(""), pattern=_WHITESPACE, replacement=" ")
    out = pc.utf8_trim(out, characters=" ")  # a run at either end became one space
    out = pc.replace_substring(pc.replace_substring(out, "``", '"'), "''", '"')
    strings = out.to_pylist()
    return [t.lower() for t in strings] if lowercase else strings


def is_start_piece(piece: str) -> bool:
    """The reference's `_is_start_piece_sp`: True if `piece` begins a word for whole-word masking."""
    return (
        piece.startswith("▁")
        or piece.startswith("<")
        or piece in _REF_PUNCT
        or not all(c.lower() in _REF_CONTINUATION_CHARS for c in piece)
    )


class SentencePieceTokenizer:
    """A SentencePiece unigram model plus the casing it was trained with.

    Build one with `train`, `load` or `from_bytes`; it pickles as (model bytes, casing), so it can be shipped
    to workers.
    """

    def __init__(self, model_bytes: bytes, lowercase: bool) -> None:
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_bytes)
        except RuntimeError as e:
            raise UserError("not a SentencePiece model: the model bytes could not be parsed") from e
        pieces = tuple(sp.id_to_piece(i) for i in range(min(len(SPECIAL_PIECES), sp.get_piece_size())))
        if pieces != SPECIAL_PIECES:
            raise UserError(
                f"SentencePiece model does not have ALBERT's special pieces: ids 0..4 are {list(pieces)}, "
                f"expected {list(SPECIAL_PIECES)}"
            )
        self._sp = sp
        self._model_bytes = bytes(model_bytes)
        self._lowercase = bool(lowercase)
        self._word_start: np.ndarray | None = None

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, model_bytes: bytes, lowercase: bool) -> SentencePieceTokenizer:
        """Rebuild from `model_bytes` (a serialized `spiece.model`) and the casing it was trained with."""
        return cls(model_bytes, lowercase)

    @classmethod
    def train(
        cls,
        sentences: Iterable[str],
        *,
        vocab_size: int = 30000,
        lowercase: bool = True,
        character_coverage: float = 0.9995,
        input_sentence_size: int = 0,
        seed: int = 0,
        num_threads: int | None = None,
    ) -> SentencePieceTokenizer:
        """Train a unigram model in memory on `sentences` (one sentence per item; empty ones are skipped).

        `input_sentence_size` > 0 trains on a uniform sample of that many sentences, drawn with `seed`. We
        sample here rather than in SentencePiece because its sampling (`shuffle_input_sentence`) gave a
        different model in each process even after `spm.set_random_generator_seed`. Without sampling, the same
        sentences and parameters gave byte-identical models across runs and processes (tested);
        `num_threads` (None: 16 on any machine) is one of those parameters — it changes the scores.
        The hard vocabulary limit is kept: a corpus too small for `vocab_size` raises `UserError`.
        """
        _check_options(vocab_size, character_coverage, num_threads)
        if input_sentence_size < 0:
            raise UserError(f"input_sentence_size must be >= 0, got {input_sentence_size}")
        lines = (p for p in (preprocess_text(s, lowercase) for s in sentences) if p)
        if input_sentence_size:
            lines = iter(_reservoir_sample(lines, input_sentence_size, seed))
        counted = _Counted(lines)
        options = _trainer_options(vocab_size, character_coverage, num_threads)
        model = _run_trainer(options, vocab_size, lambda: counted.count, sentence_iterator=counted)
        return cls(model, lowercase)

    @classmethod
    def train_file(
        cls,
        path: str | Path,
        *,
        vocab_size: int = 30000,
        lowercase: bool = True,
        character_coverage: float = 0.9995,
        num_threads: int | None = None,
    ) -> SentencePieceTokenizer:
        """Train like `train`, reading the sentences from a text file instead of a Python iterable.

        The file holds one sentence per line, already passed through `preprocess_text(line, lowercase)`, with
        no empty lines: then the model is byte-identical to `train` on the same sentences in the same order.
        SentencePiece reads the file itself, so the sentences never exist as Python strings (a sample of
        millions of sentences costs several times its text size as a list of `str`).
        """
        _check_options(vocab_size, character_coverage, num_threads)
        path = Path(path)
        if not path.is_file():
            raise UserError(f"training file not found: {path}")
        if "," in str(path):
            # SentencePiece's `input` is a comma-separated list of files
            raise UserError(f"the training file's path must not contain a comma: {path}")
        options = _trainer_options(vocab_size, character_coverage, num_threads)
        model = _run_trainer(options, vocab_size, lambda: _count_lines(path), input=str(path))
        return cls(_without_input_path(model), lowercase)

    @classmethod
    def load(cls, folder: str | Path) -> SentencePieceTokenizer:
        """Load a folder written by `save`; checks the model against the sha256 recorded beside it."""
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"tokenizer folder not found: {folder}")
        for name in (MODEL_FILE, META_FILE):
            if not (folder / name).is_file():
                raise UserError(f"{folder} is not a tokenizer folder: {name} is missing")
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            lowercase, expected_sha = meta["lowercase"], meta["model_sha256"]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"corrupt {folder / META_FILE}: {e}") from e
        if not isinstance(lowercase, bool):
            raise UserError(
                f"corrupt {folder / META_FILE}: lowercase must be true or false, got {lowercase!r}"
            )
        model_bytes = (folder / MODEL_FILE).read_bytes()
        if hashlib.sha256(model_bytes).hexdigest() != expected_sha:
            raise UserError(
                f"corrupt tokenizer: {folder / MODEL_FILE} does not match the sha256 in {META_FILE}"
            )
        return cls(model_bytes, lowercase)

    # ---- saving -------------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write the tokenizer folder atomically: build it beside `folder`, then rename it into place.

        An existing `folder` is replaced only if it is empty or is itself a tokenizer folder (never someone's
        unrelated directory). Readers see the old folder or the new one, never a half-written one.
        """
        folder = Path(folder)
        if folder.exists() and not (
            folder.is_dir() and ((folder / META_FILE).is_file() or not any(folder.iterdir()))
        ):
            raise UserError(f"{folder} exists and is not a tokenizer folder; refusing to replace it")
        with atomic_directory(folder, replace=True) as tmp:
            for name, data in self._folder_files().items():
                write_bytes(tmp / name, data)
        return folder

    def save_hf_files(self, folder: str | Path) -> None:
        """Add what `transformers.AlbertTokenizer.from_pretrained(folder)` reads to an existing folder (for
        example an exported model), each file replaced atomically."""
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"folder not found: {folder}")
        files = self._folder_files()
        for name in (MODEL_FILE, HF_TOKENIZER_FILE, HF_CONFIG_FILE):
            write_bytes(folder / name, files[name])

    def _folder_files(self) -> dict[str, bytes]:
        vocab = "".join(f"{p}\t{s:g}\n" for p, s in self._pieces_and_scores())
        meta = {
            "format": META_FORMAT,
            "lowercase": self._lowercase,
            "keep_accents": True,
            "vocab_size": self.vocab_size,
            "model_sha256": self.sha256,
            "special_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4},
        }
        return {
            MODEL_FILE: self._model_bytes,
            VOCAB_FILE: vocab.encode("utf-8"),
            HF_TOKENIZER_FILE: _json_bytes(self._hf_tokenizer_json()),
            HF_CONFIG_FILE: _json_bytes(self._hf_tokenizer_config()),
            META_FILE: _json_bytes(meta),
        }

    def _hf_tokenizer_config(self) -> dict[str, Any]:
        # transformers 5.x passes these to AlbertTokenizer.__init__; its defaults are do_lower_case=True and
        # keep_accents=False, so both are written out.
        return {
            "tokenizer_class": "AlbertTokenizer",
            "do_lower_case": self._lowercase,
            "keep_accents": True,
            "remove_space": True,
            "bos_token": CLS,
            "eos_token": SEP,
            "unk_token": UNK,
            "sep_token": SEP,
            "pad_token": PAD,
            "cls_token": CLS,
            "mask_token": MASK,
        }

    def _hf_tokenizer_json(self) -> dict[str, Any]:
        """The `tokenizers` serialization of this model, the layout transformers' AlbertConverter produces.

        transformers 5.x reads `spiece.model` only through the `protobuf` package; with `tokenizer.json` in the
        folder it needs neither protobuf nor sentencepiece. Written as plain JSON so albert_core does not import
        `tokenizers`.
        """
        normalizers: list[dict[str, Any]] = [
            {"type": "Replace", "pattern": {"String": "``"}, "content": '"'},
            {"type": "Replace", "pattern": {"String": "''"}, "content": '"'},
        ]
        if self._lowercase:
            normalizers.append({"type": "Lowercase"})
        charsmap = _precompiled_charsmap(self._model_bytes)
        if charsmap:
            normalizers.append(
                {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(charsmap).decode("ascii")}
            )
        normalizers.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
        metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}

        def special(piece: str, type_id: int) -> dict[str, Any]:
            return {"SpecialToken": {"id": piece, "type_id": type_id}}

        def sequence(name: str, type_id: int) -> dict[str, Any]:
            return {"Sequence": {"id": name, "type_id": type_id}}

        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": i,
                    "content": piece,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for i, piece in enumerate(SPECIAL_PIECES)
            ],
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [special(CLS, 0), sequence("A", 0), special(SEP, 0)],
                "pair": [
                    special(CLS, 0),
                    sequence("A", 0),
                    special(SEP, 0),
                    sequence("B", 1),
                    special(SEP, 1),
                ],
                "special_tokens": {
                    p: {"id": p, "ids": [self._sp.piece_to_id(p)], "tokens": [p]} for p in (CLS, SEP)
                },
            },
            "decoder": metaspace,
            "model": {
                "type": "Unigram",
                "unk_id": self.unk_id,
                "vocab": [[p, s] for p, s in self._pieces_and_scores()],
                "byte_fallback": False,
            },
        }

    def _pieces_and_scores(self) -> Iterator[tuple[str, float]]:
        return ((self._sp.id_to_piece(i), self._sp.get_score(i)) for i in range(self.vocab_size))

    # ---- encoding -----------------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Ids of each text, without [CLS]/[SEP]; SentencePiece encodes the batch on `num_threads` threads.

        -1 uses every core; inside a worker that owns a share of the CPUs, pass that share (more threads than
        free cores slows everything down).
        """
        batch = [preprocess_text(t, self._lowercase) for t in texts]
        if not batch:
            return []
        return self._sp.encode(batch, out_type=int, num_threads=num_threads)

    def encode_arrow(self, texts: Any, num_threads: int = -1) -> Any:
        """Ids of each string of a pyarrow string array, as a pyarrow `list<int32>` array (the same ids as
        `encode`). SentencePiece returns one int32 buffer per text, so no Python int is made per token."""
        import pyarrow as pa

        batch = preprocess_arrow(texts, self._lowercase)
        arrays = self._sp.encode(batch, out_type="numpy", num_threads=num_threads) if batch else []
        lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        tokens = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens, pa.int32()))

    def encode_one(self, text: str) -> list[int]:
        return self._sp.encode(preprocess_text(text, self._lowercase), out_type=int)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, (start, end) character span in `text` of each piece): what maps an extractive answer's pieces
        back to the original characters. Each whitespace-separated word is encoded on its own, which gives the
        pieces `encode_one` gives (SentencePiece splits at whitespace). Within a word the spans are
        SentencePiece's own alignment (it tracks its NFKC normalisation); where our preprocessing changed a
        word's length (``, '' or a lower-casing that grows, as "İ") every piece spans the whole word. A lone
        "▁" piece spans nothing: (word start, word start)."""
        words = [(m.start(), m.group()) for m in re.finditer(r"\S+", text)]
        texts = [preprocess_text(word, self._lowercase) for _, word in words]
        protos = self._sp.encode(texts, return_type="proto") if texts else []
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for (start, word), pre, proto in zip(words, texts, protos, strict=True):
            same_length = len(pre) == len(word)
            char_at = _byte_to_char(pre)
            for piece in proto.pieces:
                ids.append(piece.id)
                if same_length:
                    spans.append((start + char_at[piece.begin], start + char_at[piece.end]))
                else:
                    spans.append((start, start + len(word)))
        return ids, spans

    def encode_as_pieces(self, text: str) -> list[str]:
        return self._sp.encode(preprocess_text(text, self._lowercase), out_type=str)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; control pieces ([CLS], [SEP], [MASK], <pad>) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, id_: int) -> str:
        return self._sp.id_to_piece(int(id_))

    def piece_to_id(self, piece: str) -> int:
        """Id of `piece`; a piece not in the vocabulary gives `unk_id`."""
        return self._sp.piece_to_id(piece)

    def word_start_mask(self) -> np.ndarray:
        """Bool array over the vocabulary: True where a piece starts a word (`is_start_piece`).

        Differs from applying the reference rule to every piece in one way: the control pieces <pad>, [CLS],
        [SEP], [MASK] are False, so True only ever marks maskable text. (The rule alone would say True for
        <pad>, False for the bracketed ones; the reference never asks it about [CLS]/[SEP], which
        `create_masked_lm_predictions` skips as masking candidates.) <unk> stays True, as the rule gives.
        """
        if self._word_start is None:
            mask = np.array([is_start_piece(self._sp.id_to_piece(i)) for i in range(self.vocab_size)])
            mask[[self.pad_id, self.cls_id, self.sep_id, self.mask_id]] = False
            self._word_start = mask
        return self._word_start.copy()

    # ---- properties ---------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def lowercase(self) -> bool:
        return self._lowercase

    @property
    def model_bytes(self) -> bytes:
        """The serialized SentencePiece model (the content of `spiece.model`)."""
        return self._model_bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._model_bytes).hexdigest()

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def cls_id(self) -> int:
        return 2

    @property
    def sep_id(self) -> int:
        return 3

    @property
    def mask_id(self) -> int:
        return 4

    def __getstate__(self) -> dict[str, Any]:
        return {"model_bytes": self._model_bytes, "lowercase": self._lowercase}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_bytes"], state["lowercase"])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size}, lowercase={self._lowercase})"


class _Counted(Iterator[str]):
    """Passes sentences through, counting them (for the error message when the corpus is too small)."""

    def __init__(self, it: Iterator[str]) -> None:
        self._it = it
        self.count = 0

    def __next__(self) -> str:
        item = next(self._it)
        self.count += 1
        return item


def _byte_to_char(text: str) -> dict[int, int]:
    """Character index of each UTF-8 byte offset that starts a character (and of the end)."""
    index, offset = {}, 0
    for i, char in enumerate(text):
        index[offset] = i
        offset += len(char.encode("utf-8"))
    index[offset] = len(text)
    return index


def _check_options(vocab_size: int, character_coverage: float, num_threads: int | None) -> None:
    if vocab_size < len(SPECIAL_PIECES) + 1:
        raise UserError(f"vocab_size must be at least {len(SPECIAL_PIECES) + 1}, got {vocab_size}")
    if not 0.0 < character_coverage <= 1.0:
        raise UserError(f"character_coverage must be in (0, 1], got {character_coverage}")
    if num_threads is not None and num_threads < 1:
        raise UserError(f"num_threads must be >= 1, got {num_threads}")


def _trainer_options(vocab_size: int, character_coverage: float, num_threads: int | None) -> dict[str, Any]:
    """The ALBERT recipe's SentencePiece options (module docstring), shared by `train` and `train_file`."""
    return dict(
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        control_symbols=[CLS, SEP, MASK],
        normalization_rule_name="nmt_nfkc",
        split_digits=False,
        character_coverage=character_coverage,
        input_sentence_size=0,  # sampling is done by the caller, reproducibly
        num_threads=DEFAULT_TRAIN_THREADS if num_threads is None else num_threads,
        minloglevel=1,  # SentencePiece's INFO log is a page per training
    )


def _run_trainer(options: dict[str, Any], vocab_size: int, count: Callable[[], int], **source: Any) -> bytes:
    """Serialized model trained with `options` on `source` (`sentence_iterator=` or `input=`); `count` gives the
    number of sentences for the error message, only when SentencePiece complains."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(**source, model_writer=model, **options)
    except RuntimeError as e:
        raise _training_error(e, vocab_size, count()) from e
    return model.getvalue()


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _reservoir_sample(lines: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform sample of `k` lines (all of them if fewer), kept in input order; Algorithm R."""
    rng = random.Random(seed)
    sample: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        if i < k:
            sample.append((i, line))
        else:
            j = rng.randrange(i + 1)
            if j < k:
                sample[j] = (i, line)
    return [line for _, line in sorted(sample)]


def _training_error(e: RuntimeError, vocab_size: int, n_sentences: int) -> Exception:
    """Rephrase SentencePiece's known complaints about the corpus as one-line `UserError`s."""
    msg = str(e)
    if n_sentences == 0:
        return UserError("no sentences to train the tokenizer on (all were empty)")
    if m := _TOO_HIGH.search(msg):
        return UserError(
            f"vocab_size {vocab_size} is too large for this corpus ({n_sentences} sentences): SentencePiece can "
            f"build at most {m.group(2)} pieces from it; use a vocab_size <= {m.group(2)} or more text"
        )
    if m := _TOO_SMALL.search(msg):
        return UserError(
            f"vocab_size {vocab_size} is too small: the corpus needs at least {m.group(2)} pieces "
            f"(special pieces plus the characters within character_coverage)"
        )
    return e


def _precompiled_charsmap(model_bytes: bytes) -> bytes:
    """`ModelProto.normalizer_spec.precompiled_charsmap`: the normaliser that Hugging Face's tokenizer.json needs."""
    from sentencepiece import sentencepiece_model_pb2  # needs protobuf; only saving a folder uses it

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_bytes)
    except Exception as e:  # protobuf's DecodeError
        raise UserError(f"corrupt SentencePiece model: {e}") from None
    return proto.normalizer_spec.precompiled_charsmap


def _without_input_path(model_bytes: bytes) -> bytes:
    """The model with `trainer_spec.input` cleared: SentencePiece records the training file's path in the model,
    which would make the bytes depend on a temporary folder's name. Cleared, they equal what `train` writes for
    the same sentences (checked: protobuf re-serialises this message byte for byte)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    proto.trainer_spec.ClearField("input")
    return proto.SerializeToString()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
