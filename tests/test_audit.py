"""The protocol audit (orchestrator/report/audit.py against experiments/sources.yaml): every paper-scale
setting of every table's runs is accounted for by a source; a planned value that moves without its source
entry fails here; the Markdown in docs/ is the audit of today's grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.grid import GridError
from orchestrator.grid.files import SOURCES_FILE
from orchestrator.grid.sources import Case, load_sources
from orchestrator.report import audit as A

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results" / "paper-audit"


@pytest.fixture(scope="module")
def paper():
    """The paper scale's audit: every table of ablations/ under every recipe."""
    return A.audit("paper")


def test_every_paper_scale_setting_is_accounted_for_by_a_source(paper):
    assert not paper.failing, [(r.protocol, r.setting, r.kdgrid, r.status, r.why, r.rows) for r in paper.failing]
    assert set(paper.protocols) == {"deit", "released", "vitkd"}
    by = {(r.protocol, r.setting, json.dumps(r.kdgrid)): r for r in paper.rows}
    # what issue 28 is about, each beside its source
    assert by[("vitkd", "data.augment.repeated_aug", "false")].status == A.MATCHES
    assert by[("deit", "data.augment.repeated_aug", "true")].status == A.MATCHES
    assert by[("vitkd", "effective.precision", '"fp32"')].status == A.MATCHES
    assert by[("deit", "effective.precision", '"fp16"')].status == A.MATCHES
    ema = by[("vitkd", "effective.eval_weights", '"ema"')]
    assert ema.status == A.MATCHES and ema.rows == ["vitkd.r7", "vitkd.r8", "vitkd.r9"]
    assert "ema.py:75-83" in ema.source
    lr = by[("deit", "recipe.lr_scale_batch", "512")]
    assert "main.py:304" in lr.source and "does not say per what batch" in lr.why
    assert by[("released", "effective.lr", "0.0005")].status == A.MATCHES
    # every statement names a document and where in it
    assert all(r.source for r in paper.rows if r.status in (A.MATCHES, A.DIFFERS, A.SILENT))


def test_the_docs_hold_todays_audit(paper):
    """docs/results/paper-audit/ is this audit: regenerate it with
    `kdgrid audit --scale paper --out docs/results/paper-audit`."""
    assert (DOCS / "audit.md").read_text() == A.markdown(paper)
    assert json.loads((DOCS / "audit.json").read_text()) == json.loads(A.to_json(paper))


def test_a_planned_value_that_moves_without_its_source_fails(write_yaml):
    moved = A.audit("paper", "2,vitkd", "paper-mean", overrides=["student.recipe.warmup_epochs=6"])
    failing = {(r.protocol, r.setting, r.status) for r in moved.failing}
    assert failing == {("deit", "recipe.warmup_epochs", A.UNRECORDED)}
    row = moved.failing[0]
    assert row.kdgrid == 6.0 and row.source_value == 5.0 and "main.py:80" in row.source
    # ... and the vitkd table's own value too, named at its protocol
    sources = yaml.safe_load(SOURCES_FILE.read_text())
    sources["protocols"]["vitkd"]["settings"]["recipe.clip_grad"]["value"] = 1.0
    path = write_yaml("sources.yaml", sources)
    failing = A.audit("paper", "vitkd", "paper-mean", sources=path).failing
    assert [(r.protocol, r.setting, r.kdgrid, r.source_value) for r in failing] == [
        ("vitkd", "recipe.clip_grad", 5.0, 1.0)
    ]
    # a setting no protocol lists (as a new spec field would be) has NO SOURCE
    del sources["protocols"]["vitkd"]["settings"]["recipe.clip_grad"]
    failing = A.audit("paper", "vitkd", "paper-mean", sources=write_yaml("sources.yaml", sources)).failing
    assert [(r.setting, r.status) for r in failing] == [("recipe.clip_grad", A.NO_SOURCE)]


def test_cases_say_match_recorded_deviation_silence_and_unused():
    src = load_sources()
    row = type("Row", (), {"student": "deit_base_patch16_224", "teacher": None, "method": "none"})()

    def judge(planned, **case):
        return A.judge(planned, [Case(**case)], row, "paper-mean", src)["status"]

    assert judge(0.3, value=0.3, source="deit", at="x") == A.MATCHES
    assert judge(0.4, value=0.3, source="deit", at="x") == A.UNRECORDED
    assert judge(0.4, value=0.3, kdgrid=0.4, why="y", source="deit", at="x") == A.DIFFERS
    assert judge(1.0, kdgrid=1.0, why="y", source="jia", at="x") == A.SILENT
    assert judge(7, unused="no EMA") == A.UNUSED
    assert judge(0.1, student=["deit_tiny_patch16_224"], value=0.1, source="deit", at="x") == A.NO_SOURCE
    assert judge([1, 2], value=[1.0, 2.0], source="deit", at="x") == A.MATCHES
    assert judge(True, value=1, source="deit", at="x") == A.UNRECORDED  # a flag is not a number


def test_a_source_must_be_cited_and_named(write_yaml):
    with pytest.raises(ValueError, match="`source`"):
        Case(value=1.0)
    with pytest.raises(ValueError, match="why"):
        Case(kdgrid=1.0, source="deit", at="x")
    sources = yaml.safe_load(SOURCES_FILE.read_text())
    sources["protocols"]["vitkd"]["settings"]["recipe.epochs"]["source"] = "mmcls"
    with pytest.raises(GridError) as err:
        load_sources(write_yaml("sources.yaml", sources))
    assert "no document 'mmcls'" in str(err.value) and "recipe.epochs" in str(err.value)


def test_sources_is_no_scale():
    from orchestrator.grid.files import scale_file, scale_names

    assert "sources" not in scale_names() and scale_file("sources") is None
    with pytest.raises(GridError, match="no scale 'sources'"):
        A.audit("sources", "2", "paper-mean")


def test_compact_row_lists():
    assert A.compact(["t2.r1", "t2.r2", "t2.r3", "t2.r9", "fig4.none"]) == "t2.r1-r3, r9; fig4.none"
    assert A.compact(["t7.r1 [paper-sum, paper-mean]", "t7.r3 [paper-sum, paper-mean]"]) == (
        "t7.r1, r3 [paper-sum, paper-mean]"
    )
    assert A.compact(["vitkd.r1", "vitkd.r2"], ["vitkd.r2", "vitkd.r1"]) == "all"


def test_the_command_writes_markdown_and_json(tmp_path, capsys):
    assert (
        cli.main(["audit", "--scale", "paper", "--tables", "vitkd", "--recipe", "paper-mean", "--out", str(tmp_path)])
        == 0
    )
    md = (tmp_path / "audit.md").read_text()
    assert "## Protocol `vitkd`" in md and "| `data.augment.repeated_aug` | `False` | False |" in md
    doc = json.loads((tmp_path / "audit.json").read_text())
    assert doc["scale"] == "paper" and doc["counts"].get(A.UNRECORDED) is None
    assert (
        cli.main(["audit", "--scale", "mini", "--tables", "vitkd", "--recipe", "paper-mean", "--strict"]) == 1
    )  # analogs
    assert "UNRECORDED" in capsys.readouterr().out
