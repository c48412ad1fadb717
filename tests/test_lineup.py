"""Who the stations are: --station NAME=PROMPT and --stations FILE (engine/station/lineup.py),
with one clear error for each mistake."""
import dataclasses

import pytest

from engine.station.config import ConfigError, StationConfig
from engine.station.lineup import StationSpec, check_lineup, load_stations_file, parse_station_flag

BASE = StationConfig(seed=7, temperature=1.0, stride_seconds=5.0, context_seconds=10.0)


def test_station_flags_take_the_command_lines_settings_and_their_own_prompt():
    specs = [parse_station_flag(v, BASE, i) for i, v in enumerate(["lofi=warm lofi", "jazz= a jazz trio = late "])]
    assert [(s.name, s.config.prompt, s.config.seed) for s in specs] == [("lofi", "warm lofi", 7), ("jazz", "a jazz trio = late", 8)]
    assert specs[1].config.stride_seconds == 5.0
    check_lineup(specs, 30.0)


def test_a_stations_file_sets_each_stations_settings_and_outputs(tmp_path):
    path = tmp_path / "stations.toml"
    path.write_text('[[station]]\nname = "lofi"\nprompt = "warm lofi"\ncfg = 4.5\nwindow = 20\ncontext = 12\n'
                    'stride = 8\nicecast = "icecast://source:pw@localhost:8000/lofi.opus"\nrecord = "lofi.flac"\n\n'
                    '[[station]]\nname = "news-2"\nprompt = "ambient"\ntop_k = 50\n')
    lofi, ambient = load_stations_file(str(path), BASE, first_index=2)
    assert (lofi.config.cfg_coef, lofi.config.window_seconds, lofi.config.context_seconds, lofi.config.stride_seconds) == (4.5, 20, 12, 8)
    assert lofi.icecast_urls == ("icecast://source:pw@localhost:8000/lofi.opus",) and lofi.record_path == "lofi.flac"
    assert (ambient.name, ambient.config.top_k, ambient.config.seed, lofi.config.seed) == ("news-2", 50, 10, 9)
    check_lineup([lofi, ambient], 30.0)


@pytest.mark.parametrize("text, message", [
    ('[[station]]\nname = "a b"\nprompt = "x"\n', "must be 1 to 32 letters"),
    ('[[station]]\nname = "a"\n', "give a prompt"),
    ('[[station]]\nname = "a"\nprompt = "x"\ntempo = 3\n', "unknown key(s) tempo"),
    ('[station]\nname = "a"\n', "one [[station]] table per station"),
    ('[[station]\n', "not valid TOML"),
    ('[[station]]\nname = "a"\nprompt = "x"\nicecast = 3\n', "icecast is a URL"),
])
def test_mistakes_in_a_stations_file_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "stations.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_stations_file(str(path), BASE)


def test_a_lineup_is_checked_station_by_station():
    with pytest.raises(ConfigError, match="--station 'lofi': give NAME=PROMPT"):
        parse_station_flag("lofi", BASE, 0)
    same = [parse_station_flag("a=x", BASE, 0), parse_station_flag("a=y", BASE, 1)]
    with pytest.raises(ConfigError, match="two stations are named 'a'"):
        check_lineup(same, 30.0)
    bad = StationSpec("b", dataclasses.replace(BASE, temperature=99.0))
    with pytest.raises(ConfigError, match="station b: --temperature must be between 0 and 10"):
        check_lineup([bad], 30.0)
    with pytest.raises(ConfigError, match="station b: temperature must be a number"):
        check_lineup([StationSpec("b", dataclasses.replace(BASE, temperature="hot"))], 30.0)


def test_a_station_may_start_from_weighted_prompts(tmp_path, tiny_model):
    from engine.station.config import ModelConfig
    from engine.station.station import Station
    path = tmp_path / "stations.toml"
    path.write_text('[[station]]\nname = "mix"\nprompts = [{text = "late jazz", weight = 3}, {text = "rain"}]\n')
    (spec,) = load_stations_file(str(path), BASE)
    assert spec.config.prompts == (("late jazz", 0.75), ("rain", 0.25)) and spec.config.prompt == "late jazz"
    station = Station(dataclasses.replace(spec.config, stride_seconds=1, context_seconds=1, window_seconds=2),
                      tiny_model, model_config=ModelConfig("tiny"))
    playing = station.control_status()["playing"]
    assert [(p["text"], p["weight"]) for p in playing["prompts"]] == [("late jazz", 0.75), ("rain", 0.25)], playing
    path.write_text('[[station]]\nname = "mix"\nprompt = "x"\nprompts = [{text = "y"}]\n')
    with pytest.raises(ConfigError, match="prompt or prompts, not both"):
        load_stations_file(str(path), BASE)
    path.write_text('[[station]]\nname = "mix"\nprompts = [{text = "y", weight = -1}]\n')
    with pytest.raises(ConfigError, match="each weight must be above 0"):
        load_stations_file(str(path), BASE)
