"""Several stations in one process: who they are, from `--station NAME=PROMPT` (repeatable) and
`--stations FILE` (TOML), each its own settings over the command line's.

    [[station]]
    name = "lofi"                  # letters, digits, - and _; its routes are /s/NAME/
    prompt = "warm lofi hip hop"   # or: schedule = "lofi-programme.toml", or weighted prompts:
                                   # prompts = [{text = "jazz", weight = 2}, {text = "rain"}]
    seed = 1
    temperature = 1.0              # top_k, top_p, cfg: as the flags
    window = 30                    # context, stride: seconds, as the flags
    icecast = ["icecast://source:PASSWORD@host:8000/lofi.opus"]
    record = "lofi.flac"
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
import typing as tp

from .config import ConfigError, StationConfig
from .prompts import PromptError, weighted_prompts

#: A station's name: the path segment of its routes.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
#: Keys of a station in the stations file → StationConfig fields.
SETTINGS = {"prompt": "prompt", "schedule": "schedule_path", "seed": "seed", "temperature": "temperature",
            "top_k": "top_k", "top_p": "top_p", "cfg": "cfg_coef", "window": "window_seconds",
            "context": "context_seconds", "stride": "stride_seconds"}
#: Keys that are the station's outputs, not its generation.
OUTPUTS = ("icecast", "record")


@dataclasses.dataclass(frozen=True)
class StationSpec:
    """One station: its name, its generation settings (StationConfig) and its own outputs."""
    name: str
    config: StationConfig
    icecast_urls: tp.Tuple[str, ...] = ()
    record_path: tp.Optional[str] = None


def _check_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{where}: station name {name!r} must be 1 to 32 letters, digits, '-' or '_' "
                          f"(it is the path of its routes: /s/NAME/)")
    return name


def parse_station_flag(value: str, base: StationConfig, index: int) -> StationSpec:
    """`--station NAME=PROMPT` → a station with the command line's settings and that prompt."""
    name, sep, prompt = value.partition("=")
    if not sep or not prompt.strip():
        raise ConfigError(f"--station {value!r}: give NAME=PROMPT, e.g. --station lofi='warm lofi hip hop'")
    name = _check_name(name.strip(), "--station")
    return StationSpec(name, dataclasses.replace(base, prompt=prompt.strip(), schedule_path=None,
                                                 seed=base.seed + index))


def load_stations_file(path: str, base: StationConfig, first_index: int = 0) -> tp.List[StationSpec]:
    """The stations of a TOML file ([[station]] tables), each over the command line's settings
    (seeds default to the command line's + the station's index). ConfigError says what is wrong."""
    where = f"--stations {path}"
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it ({err.strerror or err})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML ({err})") from err
    tables = document.get("station")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: give one [[station]] table per station, each with a name and a prompt")
    specs = []
    for i, table in enumerate(tables):
        name = _check_name(table.get("name"), f"{where}, station {i + 1}")
        specs.append(station_from_table(name, table, base, first_index + i, f"{where}, station {name}"))
    return specs


def station_from_table(name: str, table: tp.Mapping[str, tp.Any], base: StationConfig, index: int,
                       where: str) -> StationSpec:
    """A station from its settings (a [[station]] table, or an add_station command), over
    `base`; the seed defaults to base's + `index`. ConfigError says what is wrong."""
    name = _check_name(name, where)
    unknown = sorted(set(table) - set(SETTINGS) - set(OUTPUTS) - {"name", "prompts"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"known: name, prompts, {', '.join(list(SETTINGS) + list(OUTPUTS))}")
    changes: tp.Dict[str, tp.Any] = {"seed": base.seed + index, "schedule_path": None}
    for key, field in SETTINGS.items():
        if key in table:
            changes[field] = table[key]
    if "prompts" in table:
        if "prompt" in table:
            raise ConfigError(f"{where}: give prompt or prompts, not both")
        try:
            mix = weighted_prompts(table["prompts"])
        except PromptError as err:
            raise ConfigError(f"{where}: {err}") from err
        changes.update(prompts=mix, prompt=max(mix, key=lambda pair: pair[1])[0])
    if "prompt" not in table and "schedule" not in table and "prompts" not in table:
        raise ConfigError(f"{where}: give a prompt (or prompts, or a schedule)")
    try:
        config = dataclasses.replace(base, **changes)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err
    icecast = table.get("icecast", [])
    if isinstance(icecast, str):
        icecast = [icecast]
    record = table.get("record")
    if not isinstance(icecast, list) or not all(isinstance(u, str) for u in icecast) or (
            record is not None and not isinstance(record, str)):
        raise ConfigError(f"{where}: icecast is a URL or a list of URLs, record a file name")
    return StationSpec(name, config, tuple(icecast), record)


def check_lineup(specs: tp.Sequence[StationSpec], max_duration_seconds: float) -> None:
    """Names unique, every station's settings valid (ConfigError naming the station)."""
    seen = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"two stations are named {spec.name!r}; each needs its own name")
        seen.add(spec.name)
        for field in ("temperature", "top_p", "cfg_coef", "window_seconds", "context_seconds", "stride_seconds"):
            if not isinstance(getattr(spec.config, field), (int, float)):
                raise ConfigError(f"station {spec.name}: {field} must be a number")
        for field in ("seed", "top_k"):
            if not isinstance(getattr(spec.config, field), int):
                raise ConfigError(f"station {spec.name}: {field} must be a whole number")
        try:
            spec.config.validate(max_duration_seconds)
        except ConfigError as err:
            raise ConfigError(f"station {spec.name}: {err}") from err
