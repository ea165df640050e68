"""The flows take the jobs' typed configs: Prefect's parameter schema (the run form of a deployment) lists every
field, and a JSON object with some fields becomes the config, unknown keys refused."""

import dataclasses

import pytest
from prefect.utilities.callables import parameter_schema

from data_jobs.config import IngestConfig, ShardsConfig, TokenizerJobConfig
from flows.pipeline import finetune_flow, ingest_flow, pipeline_flow, train_flow
from training.config import FinetuneConfig, TrainConfig


@pytest.mark.parametrize(
    ("flow", "configs"),
    [
        (ingest_flow, {"ingest_config": IngestConfig, "tokenizer_config": TokenizerJobConfig,
                       "shards_config": ShardsConfig}),
        (train_flow, {"train_config": TrainConfig}),
        (pipeline_flow, {"ingest_config": IngestConfig, "shards_config": ShardsConfig, "train_config": TrainConfig}),
    ],
    ids=lambda v: getattr(v, "name", ""),
)  # fmt: skip
def test_each_flow_parameter_schema_lists_every_config_field(flow, configs: dict) -> None:
    schema = parameter_schema(flow.fn).model_dump()
    for parameter, cls in configs.items():
        assert schema["properties"][parameter]["$ref"] == f"#/definitions/{cls.__name__}"
        properties = schema["definitions"][cls.__name__]["properties"]
        assert set(properties) == {f.name for f in dataclasses.fields(cls)}
        assert schema["properties"][parameter]["default"] == cls().to_dict()


def test_flow_parameters_become_configs_and_unknown_keys_are_refused() -> None:
    from prefect.exceptions import ParameterTypeError

    parameters = train_flow.validate_parameters({"shards": "s", "train_config": {"max_steps": 5, "lr": 1e-3}})
    assert parameters["train_config"] == TrainConfig(max_steps=5, lr=1e-3)
    with pytest.raises(ParameterTypeError, match="lrr"):
        train_flow.validate_parameters({"train_config": {"lrr": 1}})


def test_finetune_flow_takes_a_whole_finetune_config_and_a_model_to_start_from() -> None:
    schema = parameter_schema(finetune_flow.fn).model_dump()
    assert schema["properties"]["finetune_config"]["$ref"] == "#/definitions/FinetuneConfig"
    assert schema["required"] == ["finetune_config"]  # its data files have no default
    definition = schema["definitions"]["FinetuneConfig"]
    assert set(definition["properties"]) == {f.name for f in dataclasses.fields(FinetuneConfig)}
    assert set(definition["required"]) == {"model_uri", "train_path"}
    assert (
        "ner" in definition["properties"]["task"]["enum"]
        and definition["properties"]["epochs"]["default"] == 3
    )

    given = {"model_uri": "models:/m@champion", "train_path": "t.jsonl", "eval_path": "e.jsonl", "epochs": 1}
    parameters = finetune_flow.validate_parameters({"finetune_config": given, "model_uri": "models:/m/3"})
    assert (
        parameters["finetune_config"] == FinetuneConfig(**given) and parameters["model_uri"] == "models:/m/3"
    )
