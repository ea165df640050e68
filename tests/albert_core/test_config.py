import pytest

from albert_core import AlbertConfig, UserError, count_parameters
from albert_core.pretraining_data import SopConfig

# Bare-encoder sizes of the published ALBERT v2 models (Hugging Face AlbertModel, V=30000).
PUBLISHED = {"base": 11_683_584, "large": 17_683_968, "xlarge": 58_724_864, "xxlarge": 222_595_584}


@pytest.mark.parametrize("preset", PUBLISHED)
def test_published_preset_parameter_counts(preset: str) -> None:
    assert count_parameters(AlbertConfig.from_preset(preset)) == PUBLISHED[preset]


@pytest.mark.parametrize(("sharing", "millions"), [("all", 12), ("attention", 64), ("ffn", 38), ("none", 89)])
def test_sharing_ablation_matches_paper_table_4(sharing: str, millions: int) -> None:
    # ALBERT-base, E=128 (Lan et al. 2020, Table 4). The paper rounds "not-shared" 89.65M down to 89M,
    # so the check is "within one million" rather than round().
    count = count_parameters(AlbertConfig.from_preset("base", sharing=sharing))
    assert abs(count / 1e6 - millions) < 1.0


def test_groups_add_one_layer_of_parameters_each() -> None:
    one = count_parameters(AlbertConfig.from_preset("base"))
    two = count_parameters(AlbertConfig.from_preset("base", num_hidden_groups=2))
    three_inner = count_parameters(AlbertConfig.from_preset("base", inner_group_num=3))
    assert two - one == 7_087_872  # one AlbertLayer of H=768, I=3072
    assert three_inner - one == 2 * 7_087_872


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(hidden_size=100, num_attention_heads=12), "not divisible"),
        (dict(sharing="some"), "sharing must be one of"),
        (dict(num_hidden_groups=13), "exceeds num_hidden_layers"),
        (dict(sharing="none", num_hidden_groups=2), "sharing='all' only"),
        (dict(vocab_size=0), "vocab_size must be >= 1"),
        (dict(hidden_size="768"), "must be a number"),
        (dict(num_hidden_layers=2.5), "must be an integer"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(hiden_size=768), "unknown config keys: hiden_size"),
    ],
)
def test_invalid_configs_fail_with_clear_message(overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        AlbertConfig.from_preset("base", **overrides)


def test_unknown_preset_lists_choices() -> None:
    with pytest.raises(UserError, match="unknown preset 'huge'.*tiny, mini, base"):
        AlbertConfig.from_preset("huge")


def test_dict_round_trip() -> None:
    cfg = AlbertConfig.from_preset("large", sharing="none", vocab_size=8000)
    assert AlbertConfig.from_dict(cfg.to_dict()) == cfg


def _every_config() -> list:
    from data_jobs.config import IngestConfig, ShardsConfig, TokenizerJobConfig
    from flows.demo import DemoConfig
    from training.config import FinetuneConfig, TrainConfig
    from training.gate import PromotionPolicy
    from training.sweep import SweepConfig

    return [AlbertConfig.from_preset("tiny", sharing="none"), SopConfig(max_seq_len=64),
            IngestConfig(encoding="latin-1", layout="wrapped"), TokenizerJobConfig(vocab_size=900, max_memory_gb=2.5),
            ShardsConfig(max_seq_len=64, masking="dynamic"), TrainConfig(shards="s", model_overrides={"sharing": "ffn"}),
            SweepConfig(shards="s", lr=(1e-3, 2e-3), model_overrides=({}, {"num_hidden_layers": 2})), DemoConfig(),
            FinetuneConfig(model_uri="models:/m@champion", train_path="t.jsonl", eval_path="e.jsonl", init="random"),
            PromotionPolicy(metrics=("eval_loss",), margin=0.01, max_sequences=64)]  # fmt: skip


@pytest.mark.parametrize("cfg", _every_config(), ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_json_and_rejects_unknown_keys(cfg) -> None:
    cls = type(cfg)
    assert cls.from_json(cfg.to_json()) == cfg
    with pytest.raises(UserError) as error:
        cls.from_dict({**cfg.to_dict(), "no_such_field": 1})
    assert "no_such_field" in str(error.value) and "\n" not in str(error.value)
