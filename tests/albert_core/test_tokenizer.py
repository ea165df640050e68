"""SentencePieceTokenizer on real text: WikiText-2 (CRLF, pre-tokenized English), Alice (book prose) and a
Chinese Wikipedia sample. Two small models (cased and uncased) are trained once per module."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from albert_core.errors import UserError
from albert_core.tokenizer import (
    HF_CONFIG_FILE,
    HF_TOKENIZER_FILE,
    META_FILE,
    MODEL_FILE,
    VOCAB_FILE,
    SentencePieceTokenizer,
    is_start_piece,
    preprocess_text,
)

REPO = Path(__file__).resolve().parents[2]
VOCAB_SIZE = 3000


def _lines(path: Path) -> list[str]:
    # splitlines() also removes the "\r" of CRLF files (WikiText-2).
    return path.read_text(encoding="utf-8").splitlines()


def _nonblank(lines: list[str], n: int) -> list[str]:
    return [line for line in lines if line.strip()][:n]


@pytest.fixture(scope="module")
def train_lines(corpora: Path) -> list[str]:
    """2,000 WikiText paragraphs + 3,000 Chinese sentences, blank lines included (training skips them)."""
    return (
        _lines(corpora / "wikitext2-valid.raw.txt")[:2000]
        + _lines(corpora / "zhwiki_bert_sampled.txt")[:3000]
    )


@pytest.fixture(scope="module")
def held_out(corpora: Path) -> dict[str, list[str]]:
    """Real lines the models were not trained on, several hundred per source."""
    return {
        "wikitext": _nonblank(_lines(corpora / "wikitext2-valid.raw.txt")[2000:], 500),
        "alice": _nonblank(_lines(corpora / "gutenberg" / "carroll-alice.txt"), 500),
        "zhwiki": _nonblank(_lines(corpora / "zhwiki_bert_sampled.txt")[3000:], 500),
    }


@pytest.fixture(scope="module")
def uncased(train_lines: list[str]) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(train_lines, vocab_size=VOCAB_SIZE, lowercase=True)


@pytest.fixture(scope="module")
def cased(train_lines: list[str]) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(train_lines, vocab_size=VOCAB_SIZE, lowercase=False)


def test_preprocess_collapses_space_maps_quotes_keeps_accents() -> None:
    assert preprocess_text("  Crème\t``brûlée''\r\n  ", lowercase=False) == 'Crème "brûlée"'
    assert preprocess_text("  Crème\t``brûlée''\r\n  ", lowercase=True) == 'crème "brûlée"'


def test_special_ids_match_published_albert(uncased: SentencePieceTokenizer) -> None:
    assert uncased.vocab_size == VOCAB_SIZE
    assert [uncased.id_to_piece(i) for i in range(5)] == ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    ids = (uncased.pad_id, uncased.unk_id, uncased.cls_id, uncased.sep_id, uncased.mask_id)
    assert ids == (0, 1, 2, 3, 4)
    assert [uncased.piece_to_id(p) for p in ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert uncased.piece_to_id("no-such-piece-here") == uncased.unk_id
    # Control pieces never come out of text: "[MASK]" written in a sentence is ordinary characters.
    assert uncased.mask_id not in uncased.encode_one("a [MASK] b")


def test_casing_is_applied(uncased: SentencePieceTokenizer, cased: SentencePieceTokenizer) -> None:
    assert uncased.lowercase and not cased.lowercase
    assert uncased.encode_one("The Cat") == uncased.encode_one("the cat")
    assert cased.encode_one("The Cat") != cased.encode_one("the cat")


def test_training_is_deterministic_across_processes(
    train_lines: list[str], uncased: SentencePieceTokenizer, tmp_path: Path
) -> None:
    # A fresh process matters: SentencePiece's own sampling gave one model per process while repeating
    # itself within a process, so an in-process retrain alone would not catch that kind of randomness.
    lines_file = tmp_path / "lines.json"
    lines_file.write_text(json.dumps(train_lines), encoding="utf-8")
    script = (
        "import json, sys\n"
        "from albert_core.tokenizer import SentencePieceTokenizer\n"
        "lines = json.loads(open(sys.argv[1], encoding='utf-8').read())\n"
        f"print(SentencePieceTokenizer.train(lines, vocab_size={VOCAB_SIZE}, lowercase=True).sha256)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(lines_file)], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == uncased.sha256


def test_sampled_training_follows_the_seed(corpora: Path) -> None:
    wikitext = _lines(corpora / "wikitext2-valid.raw.txt")

    def train(seed: int) -> bytes:
        return SentencePieceTokenizer.train(
            wikitext, vocab_size=1000, input_sentence_size=1000, seed=seed
        ).model_bytes

    first = train(seed=0)
    assert train(seed=0) == first
    assert train(seed=1) != first


def test_save_load_round_trip(
    uncased: SentencePieceTokenizer, held_out: dict[str, list[str]], tmp_path: Path
) -> None:
    folder = uncased.save(tmp_path / "tokenizers" / "wiki")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MODEL_FILE, VOCAB_FILE, HF_TOKENIZER_FILE, HF_CONFIG_FILE, META_FILE]
    )
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    assert meta["lowercase"] is True and meta["vocab_size"] == VOCAB_SIZE
    assert meta["model_sha256"] == uncased.sha256
    assert (folder / MODEL_FILE).read_bytes() == uncased.model_bytes

    loaded = SentencePieceTokenizer.load(folder)
    assert loaded.model_bytes == uncased.model_bytes and loaded.lowercase is True
    texts = held_out["wikitext"][:50] + held_out["zhwiki"][:50]
    assert loaded.encode(texts) == uncased.encode(texts)

    # Saving again replaces the folder in place and leaves no temporary folders beside it.
    uncased.save(folder)
    assert [p.name for p in folder.parent.iterdir()] == ["wiki"]
    assert SentencePieceTokenizer.load(folder).sha256 == uncased.sha256


def test_save_refuses_to_replace_an_unrelated_folder(uncased: SentencePieceTokenizer, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a tokenizer folder"):
        uncased.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_load_errors_are_user_errors(uncased: SentencePieceTokenizer, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        SentencePieceTokenizer.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"{MODEL_FILE} is missing"):
        SentencePieceTokenizer.load(tmp_path / "empty")

    folder = uncased.save(tmp_path / "tok")
    model = bytearray((folder / MODEL_FILE).read_bytes())
    model[len(model) // 2] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(model))
    with pytest.raises(UserError, match="does not match the sha256"):
        SentencePieceTokenizer.load(folder)

    (folder / META_FILE).write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        SentencePieceTokenizer.load(folder)

    with pytest.raises(UserError, match="not a SentencePiece model"):
        SentencePieceTokenizer.from_bytes(b"\x00\x01 not a model", lowercase=True)


def test_bytes_and_pickle_round_trip(cased: SentencePieceTokenizer, held_out: dict[str, list[str]]) -> None:
    texts = held_out["alice"][:50]
    for copy in (
        SentencePieceTokenizer.from_bytes(cased.model_bytes, lowercase=False),
        pickle.loads(pickle.dumps(cased)),
    ):
        assert copy.lowercase is False and copy.sha256 == cased.sha256
        assert copy.encode(texts) == cased.encode(texts)


def test_batch_encode_equals_one_by_one(
    uncased: SentencePieceTokenizer, held_out: dict[str, list[str]]
) -> None:
    texts = [line for lines in held_out.values() for line in lines] + ["", "   "]
    one_by_one = [uncased.encode_one(t) for t in texts]
    assert uncased.encode(texts) == one_by_one
    assert uncased.encode(texts, num_threads=1) == one_by_one
    assert uncased.encode([]) == []
    assert one_by_one[-2:] == [[], []]
    assert [uncased.piece_to_id(p) for p in uncased.encode_as_pieces(texts[0])] == one_by_one[0]


@pytest.mark.parametrize("casing", ["uncased", "cased"])
def test_decode_inverts_encode_on_normalised_text(
    casing: str, held_out: dict[str, list[str]], request: pytest.FixtureRequest
) -> None:
    tok: SentencePieceTokenizer = request.getfixturevalue(casing)
    # The model's own nmt_nfkc normaliser (NFKC with exceptions: it keeps "～", for one).
    normalise = spm.SentencePieceProcessor(model_proto=tok.model_bytes).normalize
    checked = {"ascii": 0, "other": 0}
    for line in (line for lines in held_out.values() for line in lines):
        ids = tok.encode_one(line)
        if tok.unk_id in ids:  # a character outside the vocabulary cannot come back
            continue
        text = preprocess_text(line, tok.lowercase)
        if text.isascii():
            assert tok.decode(ids) == text
            checked["ascii"] += 1
        else:
            assert tok.decode(ids) == normalise(text).replace("▁", " ").strip()
            checked["other"] += 1
    assert min(checked.values()) > 300, checked


@pytest.mark.parametrize("casing", ["uncased", "cased"])
def test_transformers_albert_tokenizer_gives_the_same_ids(
    casing: str, held_out: dict[str, list[str]], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    tok: SentencePieceTokenizer = request.getfixturevalue(casing)
    folder = tok.save(tmp_path / casing)

    hf = transformers.AlbertTokenizer.from_pretrained(folder)  # no extra arguments: the folder says it all
    assert (hf.do_lower_case, hf.keep_accents) == (tok.lowercase, True)
    specials = (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id)
    assert specials == (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id)
    raw = tokenizers.Tokenizer.from_file(str(folder / HF_TOKENIZER_FILE))

    for source, texts in held_out.items():
        ours = tok.encode(texts)
        assert hf(texts, add_special_tokens=False)["input_ids"] == ours, source
        assert [e.ids for e in raw.encode_batch(texts, add_special_tokens=False)] == ours, source
    assert hf(held_out["alice"][0])["input_ids"] == [
        tok.cls_id,
        *tok.encode_one(held_out["alice"][0]),
        tok.sep_id,
    ]


def test_save_hf_files_into_an_existing_folder(cased: SentencePieceTokenizer, tmp_path: Path) -> None:
    cased.save_hf_files(tmp_path)
    config = json.loads((tmp_path / HF_CONFIG_FILE).read_text(encoding="utf-8"))
    assert config["do_lower_case"] is False and config["keep_accents"] is True
    assert (tmp_path / MODEL_FILE).read_bytes() == cased.model_bytes
    with pytest.raises(UserError, match="not found"):
        cased.save_hf_files(tmp_path / "missing")


def test_vocab_too_large_for_the_corpus(corpora: Path) -> None:
    tiny = _lines(corpora / "gutenberg" / "carroll-alice.txt")[:40]
    with pytest.raises(UserError, match=r"vocab_size 5000 is too large .* at most \d+ pieces"):
        SentencePieceTokenizer.train(tiny, vocab_size=5000)


def test_other_training_mistakes(corpora: Path) -> None:
    zh = _lines(corpora / "zhwiki_bert_sampled.txt")[:200]
    with pytest.raises(UserError, match="too small"):
        SentencePieceTokenizer.train(zh, vocab_size=50)
    with pytest.raises(UserError, match="no sentences"):
        SentencePieceTokenizer.train(["", "   ", "\r\n"], vocab_size=100)
    with pytest.raises(UserError, match="vocab_size must be"):
        SentencePieceTokenizer.train(zh, vocab_size=0)


def test_word_start_mask(uncased: SentencePieceTokenizer) -> None:
    mask = uncased.word_start_mask()
    assert mask.dtype == np.bool_ and mask.shape == (uncased.vocab_size,)

    def start(piece: str) -> bool:
        piece_id = uncased.piece_to_id(piece)
        assert piece_id != uncased.unk_id, f"{piece!r} is not in the vocabulary"
        return bool(mask[piece_id])

    assert start("▁the") and start(",") and start("的")
    assert not start("s")  # a bare continuation, as in "cat|s"
    assert not mask[[uncased.pad_id, uncased.cls_id, uncased.sep_id, uncased.mask_id]].any()
    assert mask[uncased.unk_id]
    mask[:] = False  # callers get a copy
    assert uncased.word_start_mask().any()


@pytest.mark.parametrize(
    ("piece", "starts"),
    [
        ("▁the", True),
        ("▁", True),
        ("ing", False),
        ("s.", False),  # letters and listed punctuation only: a continuation
        (",", True),  # a single punctuation piece
        ("'s", True),  # the reference's punctuation list has no "'", so this counts as "foreign"
        ("1", True),  # digits are not in the reference's letter set
        ("é", True),
        ("的", True),
        ("<unk>", True),
    ],
)
def test_is_start_piece_follows_the_reference(piece: str, starts: bool) -> None:
    assert is_start_piece(piece) is starts


def test_train_file_gives_the_same_model_as_train(
    train_lines: list[str], uncased: SentencePieceTokenizer, tmp_path: Path
) -> None:
    """The job trains from a file of preprocessed lines; same sentences, same order -> the same bytes (the
    file's path, which SentencePiece records in the model, is cleared)."""
    path = tmp_path / "sample.txt"
    lines = [p for p in (preprocess_text(s, lowercase=True) for s in train_lines) if p]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    from_file = SentencePieceTokenizer.train_file(path, vocab_size=VOCAB_SIZE, lowercase=True)
    assert from_file.model_bytes == uncased.model_bytes
    assert str(tmp_path).encode() not in from_file.model_bytes
    with pytest.raises(UserError, match="vocab_size 200000 is too large"):
        SentencePieceTokenizer.train_file(path, vocab_size=200_000)
    with pytest.raises(UserError, match="not found"):
        SentencePieceTokenizer.train_file(tmp_path / "missing.txt")
