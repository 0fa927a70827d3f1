"""Importing real logs through mapping files; bad mappings and bad rows are reported."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import ConfigError, InvalidArgument, MappingError
from engine.logs.importer import import_log
from engine.logs.mapping import load_mapping, parse_mapping
from features.logio import read_log


def test_ipinyou_sample_imports_every_row(shared_data: Path, tmp_path: Path) -> None:
    train = shared_data / "ipinyou" / "ipinyou.train.csv"
    test = shared_data / "ipinyou" / "ipinyou.test.csv"
    out = tmp_path / "ipinyou.parquet"
    report = import_log(load_mapping("ipinyou"), [train, test], out)
    source = pl.concat([pl.read_csv(p, infer_schema=False) for p in (train, test)])
    assert report.rows_read == len(source) == report.rows_written
    assert report.rows_rejected == 0 and report.rejects is None
    log = read_log(out)
    assert log["engaged"].sum() == (source["IsClick"] == "True").sum()
    assert set(log["ts"].unique().to_list()) == {
        datetime(2013, 10, 18, 16, tzinfo=UTC),  # 2013-10-19 00:00 in Beijing
        datetime(2013, 10, 19, 16, tzinfo=UTC),
    }
    row = log.filter(pl.col("request_id") == source["BidID"][0]).row(0, named=True)
    assert row["bid"] == pytest.approx(float(source["BiddingPrice"][0]) / 100)
    assert row["user_interests"] == source["UserTag"][0].split(",")
    assert row["pricing"] == "cpm" and row["shown"] is True
    assert log["PayingPrice"].dtype == pl.String  # passthrough kept as read


@pytest.mark.parametrize("policy", ["random_men", "bts_men"])
def test_open_bandit_sample_imports_with_propensities(
    shared_data: Path, tmp_path: Path, policy: str
) -> None:
    path = shared_data / "open_bandit" / policy / "men.csv"
    report = import_log(load_mapping("open_bandit"), [path], tmp_path / "obd.parquet")
    source = pl.read_csv(path)
    assert report.rows_written == len(source) == 10_000 and report.rows_rejected == 0
    log = read_log(tmp_path / "obd.parquet")
    assert log["engaged"].sum() == source["click"].sum()
    assert log["propensity"].sum() == pytest.approx(source["propensity_score"].sum())
    assert log["position"].dtype == pl.Int32 and set(log["position"].unique()) == {1, 2, 3}
    assert log["request_id"].n_unique() == 10_000
    assert log["ts"].is_sorted()


MINIMAL = """
[columns]
request_id = "id"
user_id = "user"
ad_id = "ad"
[timestamp]
column = "time"
format = "%Y-%m-%d %H:%M:%S"
[constants]
touchpoint = "ott"
format = "video"
pricing = "cpm"
shown = true
[expressions]
bid = "TRY_CAST(price AS DOUBLE) * 2"
[value_maps.slot]
source = "place"
values = { P = "ott_pause", B = "ott_boot" }
[outcomes]
engaged = "clicked"
"""


def write_csv(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "in.csv"
    path.write_text("id,time,user,ad,price,place,clicked\n" + "\n".join(rows) + "\n")
    return path


def test_rows_that_fail_to_parse_are_counted_and_kept_aside(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        [
            "r1,2026-03-02 20:00:00,u1,a1,1.5,P,1",
            "r2,not a time,u1,a2,1.5,P,0",
            "r3,2026-03-02 20:01:00,u1,a3,cheap,P,0",
            "r4,2026-03-02 20:02:00,u1,a4,1.0,X,0",
            "r5,2026-03-02 20:03:00,,a5,1.0,B,0",
            "r6,2026-03-02 20:04:00,u2,a6,1.0,B,maybe",
            "r7,2026-03-02 20:05:00,u2,a7,-3,B,0",
        ],
    )
    out = tmp_path / "out.parquet"
    report = import_log(parse_mapping(MINIMAL), [path], out, max_rejected_pct=100)
    assert (report.rows_read, report.rows_written, report.rows_rejected) == (7, 1, 6)
    rejects = pl.read_parquet(out.with_name("out.parquet.rejects.parquet"))
    reasons = dict(zip(rejects["id"].to_list(), rejects["reject_reason"].to_list(), strict=True))
    assert reasons == {
        "r2": "ts: cannot read time",
        "r3": "bid: cannot read price",
        "r4": "slot: not in value_maps.slot",
        "r5": "user_id: required value missing",
        "r6": "engaged: cannot read clicked",
        "r7": "bid: outside [0, None]",
    }
    assert rejects["source_line"].to_list() == [2, 3, 4, 5, 6, 7]
    good = read_log(out)
    assert good.row(0, named=True)["bid"] == 3.0 and good["engaged"].to_list() == [True]


def test_value_map_default_and_epoch_timestamps(tmp_path: Path) -> None:
    mapping = MINIMAL.replace('format = "%Y-%m-%d %H:%M:%S"', 'epoch_unit = "ms"').replace(
        'values = { P = "ott_pause", B = "ott_boot" }',
        'values = { P = "ott_pause" }\ndefault = "ott_home_banner"',
    )
    path = write_csv(tmp_path, ["r1,1772481600000,u1,a1,1,Z,0"])
    import_log(parse_mapping(mapping), [path], tmp_path / "o.parquet")
    row = read_log(tmp_path / "o.parquet").row(0, named=True)
    assert row["slot"] == "ott_home_banner"
    assert row["ts"] == datetime(2026, 3, 2, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (("[constants]", "[constant]"), "constant", "Extra inputs are not permitted"),
        (
            ('request_id = "id"', 'request_id = "id"\nwidth = "w"'),
            "columns.width",
            "not a column of the log schema",
        ),
        (
            ("shown = true", 'shown = true\nuser_id = "x"'),
            "constants.user_id",
            "already defined in [columns]",
        ),
        (('ad_id = "ad"\n', ""), "ad_id", "required column is not mapped"),
        (
            ('format = "%Y-%m-%d %H:%M:%S"', 'format = "%Y"\nepoch_unit = "s"'),
            "timestamp",
            "needs exactly one of format and epoch_unit",
        ),
        (
            ("[outcomes]\nengaged", "[outcomes]\nwatch_fraction"),
            "outcomes.watch_fraction",
            "must be one of engaged, converted, negative",
        ),
        (('bid = "TRY_CAST(price AS DOUBLE) * 2"', 'bid = "price *"'), None, None),
    ],
    ids=[
        "unknown-section",
        "unknown-column",
        "defined-twice",
        "required-unmapped",
        "timestamp-two-ways",
        "bad-outcome",
        "syntax-deferred",
    ],
)
def test_bad_mapping_files_name_the_key(
    edit: tuple[str, str], key: str | None, problem: str | None
) -> None:
    text = MINIMAL.replace(*edit)
    if key is None:  # SQL is checked against the input, see the next test
        parse_mapping(text)
        return
    with pytest.raises(ConfigError) as info:
        parse_mapping(text)
    assert any(k == key and problem in p for k, p in info.value.problems), info.value.problems


def test_not_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_mapping("[columns\n")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("TRY_CAST(price AS DOUBLE) * 2", "price *"), "expressions.bid: not a valid SQL"),
        (
            ("TRY_CAST(price AS DOUBLE) * 2", "price * 2"),
            "expressions.bid: arithmetic on dtypes str",
        ),
        (('user_id = "user"', 'user_id = "person"'), "columns.user_id: source column 'person'"),
        (
            ("[outcomes]", '[passthrough]\ncolumns = ["slot"]\n[outcomes]'),
            "passthrough.columns: 'slot' is a schema column",
        ),
    ],
    ids=["bad-sql", "text-arithmetic", "missing-source", "passthrough-shadows"],
)
def test_mapping_that_does_not_fit_the_input(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    path = write_csv(tmp_path, ["r1,2026-03-02 20:00:00,u1,a1,1.5,P,1"])
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        import_log(parse_mapping(MINIMAL.replace(*edit)), [path], tmp_path / "o.parquet")


def test_missing_input_and_missing_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="file not found"):
        import_log(parse_mapping(MINIMAL), [tmp_path / "none.csv"], tmp_path / "o.parquet")
    with pytest.raises(ConfigError, match="cannot read"):
        load_mapping(tmp_path / "none.toml")


def test_a_request_whose_rows_disagree_is_rejected_whole(tmp_path: Path) -> None:
    """Before: the whole import failed ("user_id: differs ... in 1 request(s)", no example),
    hiding every row rejected before the check."""
    path = write_csv(
        tmp_path,
        [
            "r1,2026-03-02 20:00:00,u1,a1,1,P,0",
            "r1,2026-03-02 20:00:00,u2,a2,1,P,0",
            "r2,2026-03-02 20:00:00,u1,a1,1,P,0",
            "r3,nope,u1,a1,1,P,0",
        ],
    )
    out = tmp_path / "o.parquet"
    report = import_log(parse_mapping(MINIMAL), [path], out, max_rejected_pct=100)
    assert (report.rows_written, report.rows_rejected) == (1, 3)
    rejects = pl.read_parquet(out.with_name("o.parquet.rejects.parquet"))
    assert rejects["id"].to_list() == ["r1", "r1", "r3"]
    assert rejects["reject_reason"][0].startswith("user_id: differs between the rows of its")


def test_cli_import_prints_counts_and_reasons(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["r1,2026-03-02 20:00:00,u1,a1,1,P,0", "r2,bad,u1,a2,1,P,0"])
    (tmp_path / "m.toml").write_text(MINIMAL)
    result = CliRunner().invoke(
        app,
        [
            "import-log",
            "--mapping",
            str(tmp_path / "m.toml"),
            "--out",
            str(tmp_path / "o.parquet"),
            "--max-rejected-pct",
            "50",
            str(path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "read 2 rows, wrote 1" in result.output and "rejected 1" in result.output
    assert "ts: cannot read time" in result.output
    assert f"first: {path}:2: ts: cannot read time: 'bad'" in result.output


def test_cli_bad_mapping_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text("[columns]\nwidth = 'w'\n")
    result = CliRunner().invoke(
        app, ["import-log", "--mapping", str(tmp_path / "m.toml"), "--out", "o.parquet", "x.csv"]
    )
    assert result.exit_code == 2
    assert "columns.width: not a column of the log schema" in result.output


def test_strict_cast_on_a_bad_value_explains_try_cast(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["r1,2026-03-02 20:00:00,u1,a1,cheap,P,1"])
    strict = MINIMAL.replace("TRY_CAST(price AS DOUBLE)", "CAST(price AS DOUBLE)")
    with pytest.raises(MappingError, match="use TRY_CAST, not CAST"):
        import_log(parse_mapping(strict), [path], tmp_path / "o.parquet")
