"""The deployments as `albert flows serve|deploy` build them, without a server: the fine-tuning deployment exists
only with a fine-tuning config, and its trigger listens to the promotions of the model that config names."""

import json
from pathlib import Path

import pytest

from albert_core.errors import UserError
from flows.cli import main
from flows.deploy import _specs
from flows.pipeline import MODEL_PROMOTED
from training.config import FinetuneConfig

CONFIG = FinetuneConfig(
    model_uri="models:/albert-tiny@champion", train_path="/data/t.jsonl", eval_path="/data/e.jsonl"
)


def names(specs: list) -> list[str]:
    return [f"{f.name}/{options['name']}" for f, options in specs]


def test_the_finetune_deployment_follows_the_configured_model(tmp_path: Path) -> None:
    without = _specs(str(tmp_path), "0 2 * * *", ["builtin"], "builtin", None)
    assert "albert-finetune/on-promoted" not in names(without)

    specs = _specs(str(tmp_path), "0 2 * * *", ["builtin"], "builtin", CONFIG)
    assert names(specs) == [*names(without), "albert-finetune/on-promoted"]
    _, options = specs[-1]
    assert options["parameters"] == {"finetune_config": CONFIG.to_dict(), "home": str(tmp_path)}
    (trigger,) = options["triggers"]
    assert trigger.expect == {MODEL_PROMOTED}
    assert trigger.match.model_dump() == {"prefect.resource.id": "albert.model.albert-tiny"}
    # the promoted version, pinned, and the home it was promoted in
    assert trigger.parameters == {
        "model_uri": "{{ event.payload.model_uri }}",
        "home": "{{ event.payload.home }}",
    }

    with pytest.raises(UserError, match="must name a registered model"):
        _specs(None, "0 2 * * *", ["builtin"], "builtin", CONFIG.replace(model_uri=str(tmp_path)))


def test_a_bad_finetune_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad-key.json").write_text(json.dumps({**CONFIG.to_dict(), "epochz": 1}))
    (tmp_path / "list.json").write_text("[1]")
    for file, needle in [
        ("missing.json", "--finetune-config-json: cannot read"),
        ("bad-key.json", "unknown fine-tuning config keys: epochz"),
        ("list.json", "not a JSON object"),
    ]:
        assert main(["flows", "deploy", "--finetune-config-json", str(tmp_path / file)]) == 2, file
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and file in err[0], err
