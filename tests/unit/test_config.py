"""The config tree: every validation rule reports its key; all problems come at once."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from engine.config import COST_COMPONENTS, load_config, parse_config
from engine.errors import ConfigError

DEFAULT: dict[str, Any] = tomllib.loads(
    resources.files("engine").joinpath("default_config.toml").read_text()
)


def edited(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(DEFAULT)
    fn(doc)
    return doc


def test_default_config_loads() -> None:
    config = load_config()
    assert config.version == "default-1"
    assert len(config.scoring.weights.vector()) == len(COST_COMPONENTS)
    assert config.slots["ott_preroll"].max_ads == 2


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("unknown-top-key", lambda d: d.update(colour="blue"), "colour", "Extra inputs"),
    (
        "unknown-weight",
        lambda d: d["scoring"]["weights"].update(loudness=1.0),
        "scoring.weights.loudness",
        "Extra inputs",
    ),
    (
        "negative-weight",
        lambda d: d["scoring"]["weights"].update(length=-0.5),
        "scoring.weights.length",
        "greater than or equal to 0",
    ),
    (
        "missing-component",
        lambda d: d["scoring"]["weights"].pop("fatigue"),
        "scoring.weights.fatigue",
        "required key missing",
    ),
    (
        "negative-lambda",
        lambda d: d["scoring"].update(cost_to_money=-1),
        "scoring.cost_to_money",
        "greater than or equal to 0",
    ),
    (
        "missing-reserve",
        lambda d: d["scoring"].pop("reserve"),
        "scoring.reserve",
        "required key missing",
    ),
    (
        "quiet-hours-range",
        lambda d: d["scoring"]["quiet_hours"].update(ott=[22, 25]),
        "scoring",
        "quiet_hours.ott: hours must be 0..23",
    ),
    (
        "quiet-hours-touchpoint",
        lambda d: d["scoring"]["quiet_hours"].update(radio=[1, 2]),
        "scoring",
        "unknown touchpoint 'radio'",
    ),
    (
        "slot-format",
        lambda d: d["slots"]["ott_pause"].update(formats=["hologram"]),
        "slots.ott_pause",
        "unknown formats ['hologram']",
    ),
    ("slot-missing", lambda d: d["slots"].pop("ott_boot"), "config", "missing ['ott_boot']"),
    (
        "cap-window-too-long",
        lambda d: d["caps"]["rules"][0].update(window="200d"),
        "caps.rules.0",
        "window 200d is longer than 180d; use lifetime",
    ),
    (
        "cap-window-unparsable",
        lambda d: d["caps"]["rules"][0].update(window="3 weeks"),
        "caps.rules.0",
        "'3 weeks' is not a duration like 5m, 24h or 30d",
    ),
    (
        "cap-scope",
        lambda d: d["caps"]["rules"][0].update(scope="planet"),
        "caps.rules.0.scope",
        "Input should be",
    ),
    (
        "cap-limit",
        lambda d: d["caps"]["rules"][0].update(limit=0),
        "caps.rules.0.limit",
        "greater than or equal to 1",
    ),
    (
        "cap-slot-of-other-touchpoint",
        lambda d: d["caps"]["rules"][0].update(touchpoint="mobile"),
        "caps.rules.0",
        "slot 'ott_boot' is not on touchpoint 'mobile'",
    ),
    (
        "gap-too-long",
        lambda d: d["caps"]["min_gaps"][0].update(min_gap="8d"),
        "caps.min_gaps.0",
        "min_gap longer than 7d",
    ),
    (
        "feedback-kind",
        lambda d: d["caps"]["feedback"].update(kinds=["shrug"]),
        "caps.feedback.kinds.0",
        "Input should be",
    ),
    (
        "block-on-nothing",
        lambda d: d["caps"]["blocks"][0].update(on=[]),
        "caps.blocks.0.on",
        "at least 1 item",
    ),
    (
        "block-on-unknown",
        lambda d: d["caps"]["blocks"][1].update(on=["purchase"]),
        "caps.blocks.1.on.0",
        "Input should be",
    ),
    (
        "block-target",
        lambda d: d["caps"]["blocks"][0].update(target="creative"),
        "caps.blocks.0.target",
        "Input should be",
    ),
    (
        "block-too-long",
        lambda d: d["caps"]["blocks"][0].update(duration="200d"),
        "caps.blocks.0",
        "longer than 180d",
    ),
    (
        "separation-of-nothing",
        lambda d: d["caps"]["separation"][0].update(advertiser=False, categories=False),
        "caps.separation.0",
        "keeps nothing apart",
    ),
    (
        "separation-slot-elsewhere",
        lambda d: d["caps"]["separation"][0].update(slot="mobile_feed"),
        "caps.separation.0",
        "slot 'mobile_feed' is not on touchpoint 'ott'",
    ),
    (
        "separation-too-long",
        lambda d: d["caps"]["separation"][0].update(min_gap="8d"),
        "caps.separation.0",
        "min_gap longer than 7d",
    ),
    (
        "competing-twice",
        lambda d: d["caps"]["competing"].update(soda=["soft_drinks"]),
        "caps",
        "'soft_drinks' is in both 'drinks' and 'soda'",
    ),
    (
        "attribute-place",
        lambda d: d["protections"]["blocked_attributes"].update(kitchen=[1]),
        "protections",
        "blocked_attributes: ['kitchen'] are not touchpoints, slots or scenes",
    ),
    (
        "attribute-number",
        lambda d: d["protections"]["blocked_attributes"].update(ott_boot=[1, 18]),
        "protections",
        "blocked_attributes.ott_boot: [18] are not OpenRTB creative attributes 1-17",
    ),
    (
        "store-url",
        lambda d: d["store"].update(url="http://localhost"),
        "store",
        "url must start with redis://, rediss://, unix:// or memory://",
    ),
    (
        "store-max-ahead",
        lambda d: d["store"].update(max_ahead="2d"),
        "store",
        "max_ahead must be at most 1d",
    ),
    (
        "store-max-ahead-form",
        lambda d: d["store"].update(max_ahead="soon"),
        "store",
        "'soon' is not a duration",
    ),
    (
        "store-fail-mode",
        lambda d: d["store"].update(fail_mode="maybe"),
        "store.fail_mode",
        "Input should be",
    ),
    (
        "intrusiveness-range",
        lambda d: d["intrusiveness"]["ott_pause"].update(video=1.5),
        "intrusiveness.ott_pause.video",
        "must be a number in [0, 1]",
    ),
    (
        "intrusiveness-missing-slot",
        lambda d: d["intrusiveness"].pop("voice_reply"),
        "intrusiveness.voice_reply",
        "missing slot",
    ),
]


@pytest.mark.parametrize(
    ("edit", "key", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_rule_names_its_key(
    edit: Callable[[dict[str, Any]], None], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(edited(edit))
    assert any(k == key and message in p for k, p in info.value.problems), info.value.problems


def test_all_problems_are_reported_at_once() -> None:
    def many(d: dict[str, Any]) -> None:
        d["scoring"]["weights"]["length"] = -1
        d["scoring"]["weights"].pop("quiet_hours")
        d["bogus"] = True

    with pytest.raises(ConfigError) as info:
        parse_config(edited(many))
    keys = {k for k, _ in info.value.problems}
    assert {"scoring.weights.length", "scoring.weights.quiet_hours", "bogus"} <= keys
    assert "3 problem(s)" in info.value.problem


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("version = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
