"""Fine-tuning a registered pretrained ALBERT for extractive question answering (`albert finetune --task qa`).

    pretrained model + SQuAD v1.1 / v2.0 JSON (`training.qa`)
      -> held-out part: `--eval FILE`, or `eval_share` of the contexts chosen by a hash of their text
      -> each question with its context as windows `doc_stride` pieces apart (`albert_core.extractive`); the
         target is the answer's first and last piece, or [CLS] where a window does not hold the whole answer
      -> AlbertForQuestionAnswering: the pretrained encoder + a start / end logit per token
      -> AdamW, warmup then linear decay, clipping at 1.0; exact match and F1 (the SQuAD script's) per epoch
      -> MLflow run in `albert-finetuning` (params, per-epoch figures, the scores and predictions as artifacts)
      -> <home>/finetune/<run>/model -> registered pyfunc (`training/qa_pyfunc.py`: an answer span with its score)

"No answer" is predicted only by models trained on SQuAD 2.0 data (some question `is_impossible`), as BERT's
`version_2_with_negative`; a v1.1 model always answers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from albert_core.extractive import answer_spans, window_batch
from albert_core.model import AlbertForQuestionAnswering
from training import qa_pyfunc
from training.config import FinetuneConfig
from training.finetune import TRAIN_LOSS, index_batches, train_epoch
from training.finetune_run import FinetuneRun, train_and_held_out
from training.qa import Encoded, Question, encode_questions, held_out, read_squad, squad_scores

EVAL_EXACT_MATCH, EVAL_F1 = "eval_exact_match", "eval_f1"
LABELS = ["start", "end"]  # the two outputs per token, as `id2label` of the exported model


def load_questions(cfg: FinetuneConfig) -> tuple[list[Question], list[Question]]:
    """(train, eval): read and checked before anything is downloaded or logged."""
    return train_and_held_out(cfg, read_squad, held_out, "questions")


def predict_answers(
    model: AlbertForQuestionAnswering,
    questions: list[Question],
    encoded: Encoded,
    cfg: FinetuneConfig,
    pad_id: int,
    allow_no_answer: bool,
) -> list[str]:
    """Each question's answer text ("" for no answer), cut from its context by the pieces' character spans."""
    spans = answer_spans(model, encoded.windows, encoded.owner, len(questions), pad_id=pad_id,
                         max_answer_len=cfg.max_answer_len, allow_no_answer=allow_no_answer,
                         batch_size=cfg.batch_size)  # fmt: skip
    answers = []
    for question, span in zip(questions, spans, strict=True):
        offsets = encoded.contexts[question.context][1]
        answers.append(
            "" if span.start is None else question.context[offsets[span.start][0] : offsets[span.end][1]]
        )
    return answers


def finetune_qa(cfg: FinetuneConfig, *, home: Path, progress: Callable[[str], Any] = print) -> dict[str, Any]:
    """Fine-tune `cfg.model_uri` to answer questions from a context, score exact match and F1 after every epoch,
    log the run to MLflow and register the reader (alias `candidate`). Returns the summary the CLI prints."""
    train, evaluation = load_questions(cfg)
    allow_no_answer = any(q.impossible for q in train)
    with FinetuneRun(cfg, home) as run:
        pad_id = run.tokenizer.pad_id
        encode = lambda qs: encode_questions(run.tokenizer, qs, cfg.max_seq_len, cfg.max_query_len,  # noqa: E731
                                             cfg.doc_stride)  # fmt: skip
        train_set, eval_set = encode(train), encode(evaluation)
        model = run.build(AlbertForQuestionAnswering, len(LABELS))
        optimizer, scheduler = run.schedule(model, len(train_set.windows))
        answered = sum(target != (0, 0) for target in train_set.targets)
        run.start(params={"train_windows": len(train_set.windows), "eval_windows": len(eval_set.windows)},
                  tags={"squad_version": "2.0" if allow_no_answer else "1.1"}, progress=progress,
                  header=f"answers to {len(train)} train / {len(evaluation)} eval questions in "
                         f"{len(train_set.windows)} / {len(eval_set.windows)} windows ({answered} training windows "
                         f"hold their answer; {train_set.questions_cut + eval_set.questions_cut} questions cut at "
                         f"{cfg.max_query_len} pieces), "
                         f"{'SQuAD 2.0: no answer allowed' if allow_no_answer else 'SQuAD 1.1'}")  # fmt: skip
        order = run.epoch_order()
        for epoch in range(1, cfg.epochs + 1):
            batches = index_batches(len(train_set.windows), cfg.batch_size, order(len(train_set.windows)))
            inputs = ({**window_batch([train_set.windows[i] for i in batch], pad_id),
                       "labels": torch.tensor([train_set.targets[i] for i in batch])} for batch in batches)  # fmt: skip
            train_loss = train_epoch(model, optimizer, scheduler, inputs, run.device)
            predicted = predict_answers(model, evaluation, eval_set, cfg, pad_id, allow_no_answer)
            scores = squad_scores(evaluation, predicted)
            run.log({TRAIN_LOSS: train_loss, EVAL_EXACT_MATCH: scores["exact_match"], EVAL_F1: scores["f1"]},
                    step=epoch)  # fmt: skip
            progress(f"epoch {epoch}/{cfg.epochs}: train_loss {train_loss:.4f}  exact match "
                     f"{scores['exact_match']:.4f}  F1 {scores['f1']:.4f} ({scores['total']} questions)")  # fmt: skip
        run.finish(
            model, labels=LABELS, pyfunc=qa_pyfunc,
            artifacts={"squad_scores.json": scores,
                       "predictions.json": {q.id: answer for q, answer in zip(evaluation, predicted, strict=True)}},
            inference={"max_query_len": cfg.max_query_len, "doc_stride": cfg.doc_stride,
                       "max_answer_len": cfg.max_answer_len, "no_answer": allow_no_answer},
        )  # fmt: skip
    return run.summary(
        exact_match=scores["exact_match"], f1=scores["f1"], has_answer=scores["has_answer"],
        no_answer=scores["no_answer"], train_questions=len(train), eval_questions=len(evaluation),
        train_windows=len(train_set.windows), eval_windows=len(eval_set.windows),
    )  # fmt: skip
