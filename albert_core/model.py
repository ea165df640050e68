"""ALBERT: A Lite BERT (Lan et al., 2020, arXiv:1909.11942), in the order the paper describes it.

References: google-research/albert `modeling.py` (the recipe) and Hugging Face `modeling_albert.py` (parameter
names, so weights map 1:1 onto `transformers.AlbertForPreTraining`). Two ideas make ALBERT small:

1. factorised embeddings: tokens embed into E (128) dimensions, then one linear map lifts them to H;
2. cross-layer sharing: one transformer layer (or a few groups) is applied L times.

Attributes keep Hugging Face's capitalised `LayerNorm` names: a checkpoint-compatibility choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from albert_core.config import AlbertConfig

ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(
        x, approximate="tanh"
    ),  # the tanh approximation BERT and ALBERT trained with
    "gelu": F.gelu,
    "relu": F.relu,
}
IGNORE_INDEX = -100  # MLM label for "not predicted", as in torch and Hugging Face


class AlbertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, all of width E, then LayerNorm."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.embedding_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.embedding_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.embedding_size)
        self.LayerNorm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (T,)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (B, T, E)
        x = x + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class AlbertAttention(nn.Module):
    """Multi-head self-attention with its residual and (post-)LayerNorm, as in BERT."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attention_dropout = cfg.attention_probs_dropout_prob
        self.output_dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        # (B, T, H) -> (B, nh, T, hs)
        q, k, v = (
            proj(x).view(B, T, self.num_heads, -1).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        dropout = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, H)
        return self.LayerNorm(x + self.output_dropout(self.dense(y)))


class AlbertLayer(nn.Module):
    """One transformer layer: attention, then the feed-forward block with its residual and LayerNorm."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        self.attention = AlbertAttention(cfg)
        self.ffn = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.full_layer_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.activation = ACTIVATIONS[cfg.hidden_act]
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.full_layer_layer_norm(x + self.dropout(self.ffn_output(self.activation(self.ffn(x)))))


class AlbertLayerGroup(nn.Module):
    """`inner_group_num` layers applied in sequence; a group is the unit of sharing."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        self.albert_layers = nn.ModuleList(AlbertLayer(cfg) for _ in range(cfg.inner_group_num))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.albert_layers:
            x = layer(x, mask)
        return x


class AlbertTransformer(nn.Module):
    """Lift E -> H, then apply L layers drawn from the shared groups."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        self.num_layers = cfg.num_hidden_layers
        self.embedding_hidden_mapping_in = nn.Linear(cfg.embedding_size, cfg.hidden_size)
        groups = [AlbertLayerGroup(cfg) for _ in range(cfg.layer_groups)]
        if cfg.sharing in ("attention", "ffn"):
            # Paper Table 4 ablation: a BERT-like stack whose attention (or feed-forward) block is one module.
            first = groups[0].albert_layers[0]
            for group in groups[1:]:
                layer = group.albert_layers[0]
                if cfg.sharing == "attention":
                    layer.attention = first.attention
                else:
                    layer.ffn, layer.ffn_output = first.ffn, first.ffn_output
                    layer.full_layer_layer_norm = first.full_layer_layer_norm
        self.albert_layer_groups = nn.ModuleList(groups)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.embedding_hidden_mapping_in(x)  # (B, T, E) -> (B, T, H)
        num_groups = len(self.albert_layer_groups)
        for i in range(self.num_layers):
            x = self.albert_layer_groups[i * num_groups // self.num_layers](x, mask)
        return x


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor  # (B, H): tanh(dense(first token))


class AlbertModel(nn.Module):
    """The bare encoder (what the paper's parameter counts measure): embeddings, transformer, pooler."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = AlbertEmbeddings(cfg)
        self.encoder = AlbertTransformer(cfg)
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> EncoderOutput:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # SDPA takes a boolean mask, True = attend; (B, T) -> (B, 1, 1, T) broadcasts over heads and queries.
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.encoder(self.embeddings(input_ids, token_type_ids), mask)
        return EncoderOutput(x, torch.tanh(self.pooler(x[:, 0])))


class AlbertMLMHead(nn.Module):
    """H -> E -> V; the decoder weight is the word-embedding matrix (tied in AlbertForPreTraining)."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.embedding_size)
        self.activation = ACTIVATIONS[cfg.hidden_act]
        self.LayerNorm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.embedding_size, cfg.vocab_size)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.activation(self.dense(x))))


class AlbertSOPHead(nn.Module):
    """Sentence-order prediction from the pooled first token: 0 = original order, 1 = swapped."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        self.dropout = nn.Dropout(cfg.classifier_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))


@dataclass
class AlbertForPreTrainingOutput:
    prediction_logits: torch.Tensor  # (B, T, V), or (B, P, V) when masked_lm_positions is given
    sop_logits: torch.Tensor  # (B, 2)
    loss: torch.Tensor | None = None  # mlm_loss + sop_loss, as the reference sums them
    mlm_loss: torch.Tensor | None = None
    sop_loss: torch.Tensor | None = None


class AlbertPreTrainedModel(nn.Module):
    """Shared init: normal(0, initializer_range) for weights, zeros for biases, as BERT and the reference."""

    config: AlbertConfig

    def init_weights(self) -> None:
        self.apply(self._init_module)

    def _init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def num_parameters(self, encoder_only: bool = False) -> int:
        """Distinct trainable tensors' elements (shared and tied weights count once)."""
        module = self.albert if encoder_only else self
        return sum(p.numel() for p in module.parameters())


class AlbertForPreTraining(AlbertPreTrainedModel):
    """Encoder + MLM head (tied to the word embeddings) + SOP head; loss is MLM + SOP when labels are given."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        self.config = cfg
        self.albert = AlbertModel(cfg)
        self.predictions = AlbertMLMHead(cfg)
        self.sop_classifier = AlbertSOPHead(cfg)
        self.init_weights()
        self.predictions.decoder.weight = self.albert.embeddings.word_embeddings.weight  # weight tying

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        sentence_order_label: torch.Tensor | None = None,
        masked_lm_positions: torch.Tensor | None = None,
    ) -> AlbertForPreTrainingOutput:
        """`labels` are aligned with the sequence (B, T), or with `masked_lm_positions` (B, P) when given.

        With positions, the MLM head runs only at the P masked positions, as the reference's
        `get_masked_lm_output` does: with P=20 of T=128 that skips 84% of the V-wide output layer.
        """
        out = self.albert(input_ids, token_type_ids, attention_mask)
        hidden = out.last_hidden_state  # (B, T, H)
        if masked_lm_positions is not None:
            index = masked_lm_positions.long().unsqueeze(-1).expand(-1, -1, hidden.size(-1))  # (B, P, H)
            hidden = hidden.gather(1, index)
        prediction_logits = self.predictions(hidden)  # (B, T or P, V)
        sop_logits = self.sop_classifier(out.pooler_output)  # (B, 2)

        mlm_loss = sop_loss = loss = None
        if labels is not None:
            mlm_loss = F.cross_entropy(
                prediction_logits.flatten(0, 1).float(), labels.flatten().long(), ignore_index=IGNORE_INDEX
            )
        if sentence_order_label is not None:
            sop_loss = F.cross_entropy(sop_logits.float(), sentence_order_label.long())
        if mlm_loss is not None and sop_loss is not None:
            loss = mlm_loss + sop_loss
        return AlbertForPreTrainingOutput(prediction_logits, sop_logits, loss, mlm_loss, sop_loss)


@dataclass
class SequenceClassifierOutput:
    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None


class AlbertClassifier(AlbertPreTrainedModel):
    """Encoder + dropout + a linear layer to `num_labels`: what the fine-tuning heads share (Hugging Face's names)."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        self.config = cfg
        self.albert = AlbertModel(cfg)
        self.dropout = nn.Dropout(cfg.classifier_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.init_weights()


class AlbertForSequenceClassification(AlbertClassifier):
    """The classifier on the pooled output (regression when num_labels == 1)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        pooled = self.albert(input_ids, token_type_ids, attention_mask).pooler_output
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(logits, loss)


@dataclass
class TokenClassifierOutput:
    logits: torch.Tensor  # (B, T, num_labels)
    loss: torch.Tensor | None = None


class AlbertForTokenClassification(AlbertClassifier):
    """The classifier on every token's hidden state (named-entity tags). Hugging Face's class builds its encoder
    without the pooler; ours keeps it (unused) and the export leaves it out."""

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TokenClassifierOutput:
        hidden = self.albert(input_ids, token_type_ids, attention_mask).last_hidden_state
        logits = self.classifier(self.dropout(hidden))  # (B, T, num_labels)
        loss = None
        if labels is not None:  # -100: padding, special tokens and a word's later pieces
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().long(), ignore_index=-100)
        return TokenClassifierOutput(logits, loss)


@dataclass
class QuestionAnsweringOutput:
    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor  # (B, T)
    loss: torch.Tensor | None = None


class AlbertForQuestionAnswering(AlbertPreTrainedModel):
    """Extractive question answering: a linear layer gives each token a start and an end logit (Hugging Face's
    `qa_outputs`, num_labels 2, no dropout). Like the token classifier, ours keeps the unused pooler and the
    export leaves it out."""

    def __init__(self, cfg: AlbertConfig):
        super().__init__()
        if cfg.num_labels != 2:
            raise ValueError(
                f"question answering has 2 outputs per token (start, end), got num_labels={cfg.num_labels}"
            )
        self.config = cfg
        self.albert = AlbertModel(cfg)
        self.qa_outputs = nn.Linear(cfg.hidden_size, 2)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> QuestionAnsweringOutput:
        """`labels`: (B, 2), the start and end token of each answer; 0 ([CLS]) where the window holds none."""
        hidden = self.albert(input_ids, token_type_ids, attention_mask).last_hidden_state
        start_logits, end_logits = self.qa_outputs(hidden).float().unbind(-1)  # (B, T) each
        loss = None
        if labels is not None:  # as Hugging Face: the mean of the start and end cross-entropies
            loss = (
                F.cross_entropy(start_logits, labels[:, 0]) + F.cross_entropy(end_logits, labels[:, 1])
            ) / 2
        return QuestionAnsweringOutput(start_logits, end_logits, loss)


def count_parameters(cfg: AlbertConfig, encoder_only: bool = True) -> int:
    """Parameter count without allocating weights (built on the meta device), so xxlarge costs nothing."""
    with torch.device("meta"):
        return AlbertForPreTraining(cfg).num_parameters(encoder_only)


__all__ = [
    "AlbertForPreTraining",
    "AlbertForPreTrainingOutput",
    "AlbertForQuestionAnswering",
    "AlbertForSequenceClassification",
    "AlbertForTokenClassification",
    "AlbertModel",
    "count_parameters",
]
