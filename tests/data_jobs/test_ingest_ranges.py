"""Large files read as byte ranges: the cuts partition every file at document boundaries, and an ingestion gives
the same documents, ids, counts and quarantine whatever the range size and the number of Ray workers."""

import io
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from albert_core.text import normalize_counted
from data_jobs.ingest import IngestConfig, ingest
from data_jobs.layouts import group_documents
from data_jobs.ranges import cut_rule, owned_span, plan_ranges

LAYOUT_TEXT = {
    "sentences": b"One.\nTwo.\n\n\nThree.\r\nFour.\n \nFive.\n\nSix.",
    "paragraphs": b"A para. More.\n\nB para.\n\t\nC. D.\n",
    "wikitext": b" = A = \n Text a.\n = = S = = \n More a.\n = B = \n\n Text b.\n = C = \n",
    "documents": b"doc one\ndoc two\n\ndoc three\r\ndoc four",
}


def _groups(raw: bytes, layout: str) -> tuple[list[list[str]], int]:
    lines = [normalize_counted(line)[0] for line in raw.decode().splitlines()]
    return group_documents(lines, layout)  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", sorted(LAYOUT_TEXT))
def test_owned_spans_partition_the_file_at_document_boundaries(layout: str) -> None:
    rng = random.Random(layout)
    # the layout's text many times over, with random filler lines, so cuts fall everywhere
    parts = [LAYOUT_TEXT[layout]]
    for _ in range(200):
        parts.append(b"\n" * rng.randint(0, 2) + LAYOUT_TEXT[layout] + (b"x" * rng.randint(0, 90)))
    raw = b"\n".join(parts)
    rule = cut_rule(layout, "utf-8", 1_000_000)  # type: ignore[arg-type]
    whole = _groups(raw, layout)
    for range_bytes in (7, 50, 333, 4096):
        f = io.BytesIO(raw)
        spans = [owned_span(f, a, b, len(raw), rule) for a, b in plan_ranges(len(raw), range_bytes)]
        assert spans[0][0] == 0 and spans[-1][1] == len(raw)
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))  # a partition
        documents, separators = [], 0
        for a, b in spans:
            docs, seps = _groups(raw[a:b], layout)
            documents += docs
            separators += seps
        assert (documents, separators) == whole, range_bytes


def _snapshot(summary: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on how the input was cut: documents, counts, quarantine."""
    folder = Path(summary["path"])
    docs = pq.read_table(sorted(folder.glob("docs-*.parquet"))).to_pylist()
    quarantine = pq.read_table(folder / "quarantine.parquet").to_pylist()
    keep = ("documents", "sentences", "bytes", "documents_in", "duplicates", "duplicates_previous", "layouts")
    return {
        "docs": sorted(docs, key=lambda d: d["id"]),
        "quarantine": sorted(quarantine, key=lambda q: (q["source"], q["offset"])),
        "sources": summary["sources"],
        **{k: summary[k] for k in keep},
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, corpora: Path) -> Path:
    """Real corpora as large single files of each kind, with duplicates across the file and bad lines."""
    folder = tmp_path_factory.mktemp("range_inputs")
    wiki = (corpora / "wikitext2-valid.raw.txt").read_bytes()  # wikitext layout, CRLF
    third = wiki.index(b"\n", len(wiki) // 3) + 1
    (folder / "wiki.txt").write_bytes(wiki + wiki[:third])  # a third of it twice: duplicates
    zh = (corpora / "zhwiki_bert_sampled.txt").read_bytes()  # sentences layout
    half = zh.index(b"\n", len(zh) // 2) + 1
    long_line = "长" * 400_000  # 1.2 MB: quarantined, with its line number and byte offset
    (folder / "zh.txt").write_bytes(zh[:half] + f"{long_line}\n\n".encode() + zh[half:])
    lines = wiki.decode().splitlines()
    rows = [json.dumps({"text": line}) if i % 97 else "{not json" for i, line in enumerate(lines)]
    (folder / "rows.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def whole(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every file read whole (one range each): the reference."""
    home = tmp_path_factory.mktemp("whole_home")
    summary = ingest([str(inputs)], "c", home=home, cfg=IngestConfig(max_line_bytes=1_000_000, range_mb=64))
    bad_rows = sum(1 for line in (inputs / "rows.jsonl").read_text().splitlines() if line == "{not json")
    assert summary["quarantined"]["by_reason"] == {"bad_json": bad_rows, "line_too_long": 1}
    return _snapshot(summary)


@pytest.mark.usefixtures("uses_ray")
def test_any_range_size_gives_the_same_version(whole: dict[str, Any], inputs: Path, tmp_path: Path) -> None:
    for range_mb in (0.05, 0.3):
        summary = ingest(
            [str(inputs)], "c", home=tmp_path / str(range_mb), cfg=IngestConfig(range_mb=range_mb)
        )
        assert len(list(Path(summary["path"]).glob("docs-*.parquet"))) > 5  # it was cut
        assert _snapshot(summary) == whole, range_mb
    (long_line,) = [q for q in whole["quarantine"] if q["reason"] == "line_too_long"]
    zh = (inputs / "zh.txt").read_bytes()
    assert (
        long_line["offset"] == zh.index(("长" * 100).encode())
        and long_line["line"] == zh[: long_line["offset"]].count(b"\n") + 1
    )


@pytest.mark.usefixtures("uses_ray")
def test_one_worker_gives_the_same_version(whole: dict[str, Any], inputs: Path, tmp_path: Path) -> None:
    """A Ray runtime with one CPU runs the tasks one at a time, in another order than the shared one."""
    script = (
        "import json, sys; from pathlib import Path\n"
        "from data_jobs.ray_runtime import ensure_ray; ensure_ray(num_cpus=1)\n"
        "from data_jobs.ingest import IngestConfig, ingest\n"
        "s = ingest([sys.argv[1]], 'c', home=Path(sys.argv[2]), cfg=IngestConfig(range_mb=0.1))\n"
        "print(json.dumps(s))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(inputs), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _snapshot(json.loads(result.stdout.strip().splitlines()[-1])) == whole
