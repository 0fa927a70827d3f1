"""Issue 19: real logs in. No row lost silently, the service's request checks at import, the
docs' examples imported, bad files named, every problem at once, warnings that save a run."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import ConfigError, MappingError
from engine.logs.importer import TooManyRejected, import_log
from engine.logs.mapping import parse_mapping
from features.logio import read_log

from .test_import import MINIMAL

FIXTURES = Path(__file__).parents[1] / "fixtures" / "imports"
DOCS = Path(__file__).parents[2] / "docs" / "mappings.md"

FEEDBACK = (
    MINIMAL.split("[constants]")[0]
    + """[constants]
touchpoint = "ott"
slot = "ott_pause"
format = "video"
pricing = "cpm"
bid = 1.0
shown = true
"""
)
HEADER = "id,time,user,ad,label"


def write(tmp_path: Path, rows: list[str], name: str = "in.csv", header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def feedback_rows(n: int = 10) -> list[str]:
    """One row of n with a dislike (label 0), the rest without feedback (label 1)."""
    return [
        f"r{i},2026-03-02 20:{i // 60:02d}:{i % 60:02d},u1,a{i},{0 if i == 0 else 1}"
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "section",
    [
        "[expressions]\nnegative_kind = \"CASE WHEN label = '0' THEN 'dislike' END\"",
        "[expressions]\nnegative_kind = \"CASE WHEN label = '0' THEN 'dislike' ELSE NULL END\"",
        '[value_maps.negative_kind]\nsource = "label"\nvalues = { "0" = "dislike" }\ndefault = ""',
        "[derived]\nkind = \"CASE WHEN label = '0' THEN 'dislike' END\"",
    ],
    ids=["case-without-else", "else-null", "value-map-default-empty", "derived"],
)
def test_a_nullable_column_may_come_out_null_from_any_section(tmp_path: Path, section: str) -> None:
    """Before: 'negative_kind: cannot read label' on every row without feedback (90% here)
    from [expressions] and [value_maps], while [derived] passed."""
    path = write(tmp_path, feedback_rows())
    out = tmp_path / "o.parquet"
    mapping = FEEDBACK + section
    if section.startswith("[derived]"):
        mapping = mapping.replace('ad_id = "ad"', 'ad_id = "ad"\nnegative_kind = "kind"')
    report = import_log(parse_mapping(mapping), [path], out)
    assert report.rows_rejected == 0
    assert read_log(out)["negative_kind"].to_list() == ["dislike"] + [None] * 9


def test_a_null_where_none_is_allowed_is_refused_with_its_reason(tmp_path: Path) -> None:
    mapping = FEEDBACK.replace('slot = "ott_pause"\n', "") + (
        "[expressions]\nslot = \"CASE WHEN label = '0' THEN 'ott_pause' END\""
    )
    path = write(tmp_path, feedback_rows(4))
    out = tmp_path / "o.parquet"
    report = import_log(parse_mapping(mapping), [path], out, max_rejected_pct=100)
    assert report.rows_written == 1 and report.rows_rejected == 3
    [reason] = report.reasons
    assert reason.rule == "slot: cannot read label" and reason.example_line == 2


def test_an_import_over_the_rejected_share_fails_and_writes_no_log(tmp_path: Path) -> None:
    """Before: 80.7% of the rows rejected and the command exited 0."""
    rows = [*feedback_rows(97), "x1,nope,u1,a1,1", "x2,nope,u1,a2,1"]
    path = write(tmp_path, rows)
    out = tmp_path / "o.parquet"
    out.write_bytes(b"an older log")
    with pytest.raises(TooManyRejected) as info:
        import_log(parse_mapping(FEEDBACK), [path], out)
    assert not out.exists()
    report = info.value.report
    assert (report.rows_read, report.rows_rejected) == (99, 2)
    assert report.rejects is not None and Path(report.rejects).exists()
    assert import_log(parse_mapping(FEEDBACK), [path], out, max_rejected_pct=5).rows_written == 97


def test_the_command_exits_1_and_names_the_reasons_and_the_rejects(tmp_path: Path) -> None:
    path = write(tmp_path, ["r1,2026-03-02 20:00:00,u1,a1,1", "r2,later,u1,a2,1"])
    (tmp_path / "m.toml").write_text(FEEDBACK)
    out = tmp_path / "o.parquet"
    args = ["import-log", "--mapping", str(tmp_path / "m.toml"), "--out", str(out), str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "read 2 rows, wrote no log, rejected 1 (50.00%)" in result.output
    assert f"first: {path}:2: ts: cannot read time: 'later'" in result.output
    assert f"{out}.rejects.parquet" in result.output
    assert "at most 1% allowed" in result.output


def pod_rows() -> list[str]:
    return [
        "r1,2026-03-02 20:00:00,u1,a1,1",
        "r1,2026-03-02 20:00:00,u1,a2,1",
        "r1,2026-03-02 20:00:00,u1,a1,1",
        "r2,2026-03-02 20:00:01,u1,a1,1",
    ]


def test_a_request_with_an_ad_twice_is_rejected_as_the_service_refuses_it(tmp_path: Path) -> None:
    """Before: imported, then every replay of it answered INVALID_ARGUMENT."""
    out = tmp_path / "o.parquet"
    report = import_log(
        parse_mapping(FEEDBACK), [write(tmp_path, pod_rows())], out, max_rejected_pct=100
    )
    assert (report.rows_written, report.rows_rejected) == (1, 3)
    [reason] = report.reasons
    assert reason.example == (
        "request.candidates[2].ad_id: 'a1' is given twice (first at request.candidates[0].ad_id)"
    )
    assert (
        reason.rule
        == "request.candidates….ad_id: … is given twice (first at request.candidates….ad_id)"
    )


def test_dedupe_keeps_the_first_row_of_a_repeated_ad(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    path = write(tmp_path, pod_rows())
    report = import_log(parse_mapping(FEEDBACK), [path], out, max_rejected_pct=100, dedupe=True)
    assert (report.rows_written, report.rows_rejected) == (3, 1)
    assert read_log(out).select("request_id", "ad_id").rows() == [
        ("r1", "a1"),
        ("r1", "a2"),
        ("r2", "a1"),
    ]
    rejects = pl.read_parquet(f"{out}.rejects.parquet")
    assert rejects["source_line"].to_list() == [3]
    assert rejects["reject_reason"][0].startswith("ad_id: given twice in its request")


def test_a_slot_of_another_touchpoint_is_rejected(tmp_path: Path) -> None:
    mapping = FEEDBACK.replace('slot = "ott_pause"', 'slot = "mobile_feed"')
    out = tmp_path / "o.parquet"
    path = write(tmp_path, feedback_rows(3))
    report = import_log(parse_mapping(mapping), [path], out, max_rejected_pct=100)
    assert report.rows_written == 0 and report.rows_rejected == 3
    assert report.reasons[0].example == "request.slot: 'mobile_feed' is not a slot of ott"


def test_an_id_over_the_servers_bound_is_rejected(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    path = write(tmp_path, ["r1,2026-03-02 20:00:00," + "u" * 200 + ",a1,1"])
    report = import_log(parse_mapping(FEEDBACK), [path], out, max_rejected_pct=100)
    assert report.rows_rejected == 1
    assert "at most 128 (server.max_string_chars)" in report.reasons[0].example


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "empty.csv is empty: no header, no rows"),
        ("header.csv", HEADER + "\n", "header.csv has no data rows (a header only)"),
    ],
)
def test_empty_files_are_refused_by_name(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    """Before: a polars traceback without the file's name, or 0 rows written and exit 0."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(MappingError, match=re.escape(message)):
        import_log(parse_mapping(FEEDBACK), [path], tmp_path / "o.parquet")
    (tmp_path / "m.toml").write_text(FEEDBACK)
    mapping, out = str(tmp_path / "m.toml"), str(tmp_path / "o.parquet")
    result = CliRunner().invoke(app, ["import-log", "--mapping", mapping, "--out", out, str(path)])
    assert result.exit_code == 2 and str(path) in result.output


@pytest.mark.parametrize(("name", "sep"), [("in.tsv", "\t"), ("in.csv", ";"), ("in.txt", "|")])
def test_the_separator_comes_from_the_suffix_or_the_header(
    tmp_path: Path, name: str, sep: str
) -> None:
    """Before: read as comma CSV, 'source column ... is not in the input'."""
    rows = [r.replace(",", sep) for r in feedback_rows(3)]
    path = write(tmp_path, rows, name, HEADER.replace(",", sep))
    report = import_log(parse_mapping(FEEDBACK), [path], tmp_path / "o.parquet")
    assert report.rows_written == 3


def test_a_wrong_separator_gets_a_hint(tmp_path: Path) -> None:
    rows = [r.replace(",", ";") for r in feedback_rows(3)]
    path = write(tmp_path, rows, "in.csv", HEADER.replace(",", ";"))
    mapping = '[source]\nseparator = ","\n' + FEEDBACK
    with pytest.raises(ConfigError) as info:
        import_log(parse_mapping(mapping), [path], tmp_path / "o.parquet")
    assert "looks ';'-separated, read with ','" in str(info.value)
    assert "set [source] separator = ';'" in str(info.value)


def test_every_missing_source_column_is_reported_at_once(tmp_path: Path) -> None:
    """Before: only the first of two misspelt columns."""
    mapping = FEEDBACK.replace('user_id = "user"', 'user_id = "usr"').replace(
        'ad_id = "ad"', 'ad_id = "add"'
    )
    with pytest.raises(ConfigError) as info:
        import_log(parse_mapping(mapping), [write(tmp_path, feedback_rows(2))], tmp_path / "o")
    assert info.value.problems == [
        ("columns.user_id", "source column 'usr' is not in the input"),
        ("columns.ad_id", "source column 'add' is not in the input"),
    ]


def test_an_expression_that_stops_the_import_is_named_with_a_value(tmp_path: Path) -> None:
    """Before: 'expressions: Invalid format string ...' for a [timestamp] problem, with an
    unrelated TRY_CAST hint."""
    mapping = FEEDBACK.replace("bid = 1.0\n", "") + '[expressions]\nbid = "CAST(label AS DOUBLE)"'
    path = write(tmp_path, ["r1,2026-03-02 20:00:00,u1,a1,cheap"])
    with pytest.raises(MappingError) as info:
        import_log(parse_mapping(mapping), [path], tmp_path / "o.parquet")
    assert info.value.field == "expressions.bid"
    assert "'cheap'" in info.value.problem and "use TRY_CAST, not CAST" in info.value.problem


def test_an_hour_without_minutes_parses(tmp_path: Path) -> None:
    mapping = FEEDBACK.replace('format = "%Y-%m-%d %H:%M:%S"', 'format = "%y%m%d%H"')
    path = write(tmp_path, ["r1,14102113,u1,a1,1"])
    import_log(parse_mapping(mapping), [path], tmp_path / "o.parquet")
    assert str(read_log(tmp_path / "o.parquet")["ts"][0]) == "2014-10-21 13:00:00+00:00"


def _toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def test_every_mapping_in_the_docs_is_a_tested_file() -> None:
    files = {p.read_text() for p in FIXTURES.glob("*.toml")}
    blocks = _toml_blocks(DOCS.read_text())
    assert len(blocks) >= 2
    for block in blocks:
        assert block in files, f"a docs/mappings.md example is not under {FIXTURES}:\n{block}"


@pytest.mark.parametrize("name", ["avazu", "talkingdata"])
def test_the_docs_examples_import_a_file_in_their_real_format(tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.parquet"
    mapping = parse_mapping((FIXTURES / f"{name}.toml").read_text())
    report = import_log(mapping, [FIXTURES / f"{name}.csv"], out)
    assert report.rows_rejected == 0 and report.rows_written == report.rows_read > 50
    log = read_log(out)
    top_user_share = log["user_id"].value_counts()["count"].max() / len(log)
    assert top_user_share < 0.10  # not one placeholder id for most rows
    assert not [w for w in report.warnings if w.startswith(("user_id", "device_id"))]


def test_a_placeholder_id_is_warned_about(tmp_path: Path) -> None:
    """The Avazu example as the docs had it: user_id = device_id, mostly 'a99f214a'."""
    text = (
        (FIXTURES / "avazu.toml").read_text().replace('user_id = "person"', 'user_id = "device_id"')
    )
    report = import_log(parse_mapping(text), [FIXTURES / "avazu.csv"], tmp_path / "o.parquet")
    [warning] = [w for w in report.warnings if w.startswith("user_id")]
    assert "one value ('a99f214a') is on" in warning and "map user_id to a finer id" in warning
    result = CliRunner().invoke(app, ["summary", "--log", str(tmp_path / "o.parquet")])
    assert result.exit_code == 0 and "warning: user_id: one value ('a99f214a')" in result.output
