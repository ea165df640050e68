"""The benchmark suite's summary: goals read from each benchmark's JSON, `met` flags, the README block.

The benchmarks themselves are not run: small result files of the shapes they write stand in for them.
"""

import datetime as dt
import json
from pathlib import Path

import pytest

from albert_core.errors import UserError
from benchmarks import suite
from benchmarks.demo import phases_from_log

ENV = {"threads": 2, "cpus": 2, "load_avg_before": [1.5, 1.0, 0.5], "load_avg_after": [2.5, 1.2, 0.6]}
README = """# project

## Performance

Some words the suite keeps.

<!-- bench:start -->
| benchmark | ratio |
|---|---|
| hand-written | 9.9x |
<!-- bench:end -->

## After

Kept too.
"""


def spread(median: float, low: float, high: float) -> dict[str, float]:
    return {"median": median, "min": low, "max": high}


def row_spread(median: float, low: float, high: float) -> dict[str, float]:
    return {"ratio": median, "ratio_min": low, "ratio_max": high}


def step_row(preset: str, level: str, ratio: float) -> dict:
    return {"preset": preset, "dtype": "fp32", "level": level, "batch": 8, "seq_len": 128, "reps": 7,
            "ours_tokens_per_s": 1200.0 * ratio, "hf_tokens_per_s": 1200.0,
            **row_spread(ratio, ratio - 0.1, ratio + 0.1)}  # fmt: skip


RESULTS = {
    "tokenize_job": {
        "quick": True, "env": {**ENV, "threads": {"ours_w2": "2 actors x 1 thread"}},
        "mb_per_s": {"ours_w2": spread(4.0, 3.5, 4.2), "spm_x_cores": spread(4.5, 4, 5), "hf": spread(2, 1.9, 2.1)},
        "ratios": {"ours_vs_spm_x_cores": spread(0.89, 0.8, 0.95), "ours_vs_hf": spread(2.0, 1.8, 2.2)},
    },
    "sop_builder": {
        "quick": True, "env": {**ENV, "builder_threads": 1},
        "rows": [{"ours_instances_per_s": 4000.0, "port_instances_per_s": 400.0, "reps": 3,
                  **row_spread(10.0, 9.0, 11.0)}],
        "memory": {"rss_delta_bytes": 25_000_000, "arrow_bytes": 10_000_000, "parquet_bytes": 1_000_000},
    },
    "model_step": {
        "quick": False, "env": ENV,
        "rows": [step_row("tiny", "kernel", 1.0), step_row("tiny", "task", 3.0),
                 step_row("base", "kernel", 0.9), step_row("base", "task", 1.1)],
    },
    "train_loader": {
        "env": ENV,
        "rows": [{"masking": m, "loader_samples_per_s": 500.0, "trainer_samples_per_s": 50.0,
                  "loader_first_batch_s": 0.3, "reps": 3, **row_spread(10.0, 8.0, 12.0)} for m in ("static", "dynamic")],
    },
    "demo": {"quick": True, "env": ENV, "warmup_seconds": 80.0, "runs": {"quick": {"seconds": [60.0], "phases": {}}}},
    # as benchmarks.time_to_quality writes it (fields the adapter reads): ours reached HF's final loss
    "time_to_quality": {
        "quick": True, "env": {**ENV, "threads": {"ours": "2 Ray Train workers x 1 torch thread"}},
        "budget": {"seconds": 150.0},
        "ours": {"first_step_start_s": 50.0, "last_step_s": 150.0, "sequences": 6400, "sequences_per_s": 64.0},
        "hf": {"sequences": 1280, "sequences_per_s": 9.0},
        "result": {"target_mlm_loss": 7.5,
                   "seconds": {"hf_s": 148.0, "ours_s": 74.0, "ours_reached": True, "ratio": 2.0},
                   "seconds_from_first_step": {"hf_s": 135.0, "ours_s": 24.0, "ours_reached": True, "ratio": 5.6}},
    },
    # as benchmarks.transfer writes it: two fine-tuning seeds, each gain over 3 standard errors of the eval set
    "transfer": {
        "quick": False, "env": ENV, "setup": {"pretraining": {"steps": 600, "collapsed": False}},
        "result": {"pretrained": {"accuracy": 0.5}, "random": {"accuracy": 0.38}, "majority_baseline": 0.25,
                   "difference": 0.12, "standard_error": 0.02, "z": 6.0, "ratio": 2.0, "seeds": [0, 1],
                   "seed_difference_sd": 0.05,
                   "per_seed": [{"difference": 0.06, "margin": 0.06}, {"difference": 0.18, "margin": 0.06}]},
    },
    # as benchmarks.ner_transfer writes it: entity F1 per init, means and two fine-tuning seeds
    "ner_transfer": {
        "quick": False, "env": ENV, "setup": {"pretraining": {"steps": 600}},
        "result": {"pretrained": {"f1": 0.12, "precision": 0.13, "recall": 0.11},
                   "random": {"f1": 0.15, "precision": 0.16, "recall": 0.14},
                   "difference": -0.03, "standard_error": 0.02, "z": -1.5, "seeds": [0, 1], "seed_difference_sd": 0.01,
                   "per_seed": [{"pretrained": {"f1": 0.12}, "random": {"f1": 0.16}},
                                {"pretrained": {"f1": 0.12}, "random": {"f1": 0.12}}]},
    },
    # as benchmarks.scale writes them: evaluated there, 100 vs 10 MB in a quick run
    "scale": {
        "quick": True, "env": ENV,
        "goals": {
            "P9_rss": {"value": 2.5, "target": 3.0, "met": True, "raw": {"sizes_mb": [100.0]},
                       "figures": "tokenizer 2.50 GB at 100 MB (quick: no 1 GB run)"},
            "P9_rss_growth": {"value": 2.2, "target": 1.5, "met": False, "raw": {"sizes_mb": [10.0, 100.0]},
                              "figures": "tokenizer 2.20x, 100 vs 10 MB (quick: no 1 GB run)"},
            "P9_throughput": {"not_run": "tokenize failed at 100 MB: exit code 1: out of memory", "target": 1.0},
            "P9_e2e": {"value": 0.9, "target": 2.0, "met": False, "raw": {"mb_per_s": 1.8}, "figures": "1.80 MB/s"},
        },
    },
}  # fmt: skip


@pytest.fixture
def paths(tmp_path: Path) -> suite.Paths:
    """A results folder holding the stand-in results (no train_scaling: not run) and a README with markers."""
    results = tmp_path / "results"
    results.mkdir()
    for name, data in RESULTS.items():
        (results / f"{name}.json").write_text(json.dumps(data))
    (tmp_path / "README.md").write_text(README)
    return suite.Paths(results=results, readme=tmp_path / "README.md")


def test_one_entry_per_goal_with_ratio_met_and_context(paths: suite.Paths) -> None:
    summary = suite.write_summary(paths)
    assert list(summary) == ["P1_spm", "P1_hf", "P2_speed", "P2_rss", "P3", "P4_static", "P4_dynamic",
                             "P5_demo", "P5_demo_quick", "P6", "P8", "P9_rss", "P9_rss_growth",
                             "P9_throughput", "P9_e2e", "P10_transfer", "P10_ner"]  # fmt: skip
    assert json.loads((paths.results / "summary.json").read_text()) == summary

    assert summary["P1_spm"]["ratio"] == spread(0.89, 0.8, 0.95) and summary["P1_spm"]["met"] is True
    assert summary["P1_hf"]["met"] is False  # 2.0 < 4
    assert summary["P1_hf"]["threads"] == {"ours_w2": "2 actors x 1 thread"}
    assert summary["P1_hf"]["quick"] is True and summary["P1_hf"]["load"] == {"before": 1.5, "after": 2.5}
    assert summary["P2_speed"]["met"] is True and summary["P2_speed"]["threads"] == 1  # 10 >= 10
    # memory: at most 2x the output; 25 MB over 10 MB of Arrow rows is 2.5x
    assert summary["P2_rss"]["ratio"]["median"] == pytest.approx(2.5) and summary["P2_rss"]["met"] is False
    # P3 reads base at task level when base was measured, kernel level beside it
    assert summary["P3"]["ratio"]["median"] == pytest.approx(1.1) and summary["P3"]["met"] is False
    assert summary["P3"]["raw"]["preset"] == "base" and summary["P3"]["raw"]["kernel_level_ratio"] == 0.9
    assert summary["P4_dynamic"]["met"] is True and summary["P4_dynamic"]["source"] == "train_loader.json"
    # the demo: target / seconds, so 90 s / 60 s = 1.5 is met; a quick run has no full demo
    assert summary["P5_demo_quick"]["ratio"]["median"] == pytest.approx(1.5)
    assert summary["P5_demo_quick"]["met"] is True
    assert summary["P5_demo"]["status"].startswith("not run") and summary["P5_demo"]["met"] is None
    assert summary["P6"]["status"] == "not run" and summary["P6"]["ratio"] is None
    # time to quality: HF's seconds over ours' to HF's final loss, from command launch; at least 3x
    assert summary["P8"]["ratio"] == spread(2.0, 2.0, 2.0) and summary["P8"]["met"] is False
    assert summary["P8"]["raw"]["ratio_from_first_step"] == 5.6 and "ours 74 s" in summary["P8"]["figures"]
    # transfer: the gain in units of 3 standard errors, the seeds' own ratios as the spread
    assert (
        summary["P10_transfer"]["ratio"] == spread(2.0, 1.0, 3.0) and summary["P10_transfer"]["met"] is True
    )
    assert "pretrained 0.500 vs random init 0.380" in summary["P10_transfer"]["figures"]
    # NER transfer: pretrained entity F1 over random init's (0.12 / 0.15), the seeds' ratios (0.75, 1) the spread
    assert summary["P10_ner"]["ratio"] == pytest.approx(spread(0.8, 0.75, 1.0))
    assert summary["P10_ner"]["met"] is False and summary["P10_ner"]["source"] == "ner_transfer.json"
    assert "entity F1 pretrained 0.120 vs random init 0.150 (-0.030" in summary["P10_ner"]["figures"]
    # scale: GB at most 3, growth at most 1.5x, MB/s per core at least 2; a failed stage says which
    assert summary["P9_rss"]["ratio"]["median"] == 2.5 and summary["P9_rss"]["met"] is True
    assert summary["P9_rss"]["unit"] == "GB" and "quick: no 1 GB run" in summary["P9_rss"]["figures"]
    assert summary["P9_rss_growth"]["met"] is False and summary["P9_e2e"]["met"] is False
    assert summary["P9_throughput"]["status"] == "not run: tokenize failed at 100 MB: exit code 1: out of memory"  # fmt: skip

    md = (paths.results / "summary.md").read_text()
    assert md.count("\n| P") == 17 and "**missed**" in md and "| P6 |" in md


def test_failed_and_unreadable_benchmarks_are_not_trusted(paths: suite.Paths) -> None:
    (paths.results / "train_scaling.json").write_text(json.dumps({"env": ENV, "result": {"ratio": 1.0}}))
    summary = suite.write_summary(paths, failed={"model_step"})
    assert summary["P3"]["status"] == "failed" and summary["P3"]["met"] is None  # its old JSON is stale
    assert summary["P6"]["status"].startswith("unreadable (KeyError")


def test_ner_transfer_without_an_entity_found_is_not_a_measurement(paths: suite.Paths) -> None:
    data = RESULTS["ner_transfer"]
    zero = {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    result = {**data["result"], "pretrained": zero, "random": zero}
    (paths.results / "ner_transfer.json").write_text(json.dumps({**data, "quick": True, "result": result}))
    entry = suite.build_summary(paths.results)["P10_ner"]
    assert (
        entry["status"] == "not run: entity F1 0 for both inits: the recipe found no entity, measures nothing"
    )
    assert entry["ratio"] is None and entry["met"] is None


def test_readme_block_is_replaced_and_the_rest_kept(paths: suite.Paths) -> None:
    run = {"quick": True, "only": None, "cpus": 2, "seconds": 290.0,
           "benchmarks": {"model_step": {"seconds": 12.0, "rc": 0}}}  # fmt: skip
    suite.write_summary(paths, run=run)
    text = paths.readme.read_text()
    before, block = text.split(suite.START)
    block, after = block.split(suite.END)
    assert before == README.split(suite.START)[0] and after == README.split(suite.END)[1]
    assert "hand-written" not in block
    assert (
        "| P3: training tokens/s >= 1.2x HF AlbertForPreTraining (fp32, task level) | >= 1.2 | 1.1 (1-1.2)"
        in block
    )
    assert "| P6: " in block and "not run" in block
    assert "`make bench` (some figures from `--quick` runs)" in block  # model_step was a full run
    assert "2 cores, 4.8 min in all, 1-minute load 1.5-2.5" in block
    assert json.loads((paths.results / "suite.json").read_text()) == run
    assert "| model_step | 12 | 0 |" in (paths.results / "summary.md").read_text()

    suite.write_summary(paths)  # again, from suite.json: the same README
    assert paths.readme.read_text() == text


def test_readme_without_markers_is_a_user_error(paths: suite.Paths) -> None:
    paths.readme.write_text("# project\n\n## Performance\n")
    with pytest.raises(UserError, match="bench:start"):
        suite.write_summary(paths)


def test_only_selects_the_benchmarks_of_the_goals_named() -> None:
    names = lambda only, quick=False: [b.name for b in suite.select(only, quick)]  # noqa: E731
    assert names(["P1"]) == ["tokenize_job"]
    assert names(["P3", "P6"]) == ["model_step", "train_scaling"]
    assert names(["P5_demo_quick", "train_curves"]) == ["train_curves", "demo"]
    assert names(["P9"]) == names(["P9_e2e"]) == ["scale"]
    assert names(["P8"]) == ["time_to_quality"]
    assert names(["P10"]) == ["transfer", "ner_transfer"] and names(["P10_ner"]) == ["ner_transfer"]
    assert "learning_curve" not in names(None, quick=True) and "learning_curve" in names(None)
    with pytest.raises(UserError, match="P99"):
        suite.select(["P99"], quick=False)


def test_demo_phases_from_prefect_log_lines() -> None:
    log = """albert demo (quick): {...}
18:17:48.217 | INFO    | Flow run 'fragrant-goshawk' - Beginning flow run 'fragrant-goshawk' for flow 'albert-pipeline'
18:17:48.537 | INFO    | Flow run 'jasper-capybara' - Beginning subflow run 'jasper-capybara' for flow 'albert-ingest'
2026-11-23 18:18:02,113	INFO streaming_executor.py:215 -- Starting execution of Dataset dataset_0
18:18:13.484 | INFO    | Task run 'ingest_task-05f' - Finished in state Completed()
18:18:23.611 | INFO    | Task run 'tokenizer_task-26b' - Finished in state Completed()
18:18:31.137 | INFO    | Task run 'shards_task-fb1' - Finished in state Completed()
18:19:30.910 | INFO    | Task run 'train_task-040' - Finished in state Completed()
18:19:35.000 | INFO    | Task run 'promote_task-a1c' - Finished in state Completed()
"""
    launched = dt.datetime(2026, 11, 23, 18, 17, 30, 217000)
    phases = phases_from_log(log, launched, launched + dt.timedelta(seconds=130))
    assert phases == {"start-up": 18.0, "ingest": 25.3, "tokenizer": 10.1, "shards": 7.5, "train": 59.8,
                      "promote": 4.1, "predict + shutdown": 5.2}  # fmt: skip
