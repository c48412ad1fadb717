import pytest

from engine.station.config import ConfigError, StationConfig


def test_defaults_are_the_seed_window():
    c = StationConfig()
    c.validate()
    assert (c.window_seconds, c.context_seconds, c.stride_seconds) == (30.0, 20.0, 10.0)
    assert c.resolved_buffer_ahead_seconds == 21.0  # two strides plus one second


@pytest.mark.parametrize("changes, message", [
    (dict(stride_seconds=-1), "--stride must be positive"),
    (dict(stride_seconds=0), "--stride must be positive"),
    (dict(context_seconds=-2), "--context"),
    (dict(window_seconds=31), "longer than the model's maximum"),
    (dict(context_seconds=25, stride_seconds=10), "must fit in --window"),
    (dict(top_p=1.5), "--top-p"),
    (dict(buffer_ahead_seconds=5), "at least one stride"),
    (dict(prefill_seconds=50), "--prefill"),
    (dict(duration_seconds=0), "--duration"),
    (dict(prompt="x" * 5000), "limit is"),
])
def test_validation_rejects_with_a_clear_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        StationConfig(**changes).validate()


def test_window_limit_follows_the_model():
    c = StationConfig(window_seconds=12, context_seconds=8, stride_seconds=4)
    c.validate(max_duration_seconds=12)
    with pytest.raises(ConfigError):
        c.validate(max_duration_seconds=10)


def test_context_plus_stride_may_equal_window():
    StationConfig(window_seconds=10, context_seconds=6, stride_seconds=4).validate()


def test_flags_become_the_config_records_and_the_token_may_come_from_the_environment(monkeypatch):
    import server
    parser = server.build_parser()
    monkeypatch.setenv("RADIO_CONTROL_TOKEN", "from-the-environment")
    models, engine, outputs, network = server.configs_from_args(parser.parse_args(
        ["--model", "tiny", "--dtype", "fp32", "--state-dir", "/tmp/s", "--clock-speed", "4", "--no-play", "--allow-origin",
         "https://a.example", "--max-listeners", "7", "--max-listeners-per-ip", "2", "--handshake-timeout", "3",
         "--control-rate", "9"]))
    assert (models.name, models.dtype, models.device) == ("tiny", "fp32", "auto")
    assert engine.state_dir == "/tmp/s" and outputs.clock_speed == 4 and network.control_token == "from-the-environment"
    assert (network.allow_origins, network.max_listeners, network.max_listeners_per_ip) == (("https://a.example",), 7, 2)
    assert network.handshake_timeout_seconds == 3 and network.control_per_second == 9
    _, _, _, network = server.configs_from_args(parser.parse_args(["--control-token", "given-on-the-line"]))
    assert network.control_token == "given-on-the-line"  # the flag wins
    outputs.play, outputs.clock_speed = True, 4
    with pytest.raises(ValueError, match="add --no-play"):
        outputs.validate()
    network.allow_origins = ("example.org/path",)
    with pytest.raises(ValueError, match="give an origin such as"):
        network.validate()


def test_the_model_record_refuses_an_unknown_device_or_precision():
    from engine.station.config import ModelConfig
    with pytest.raises(ConfigError, match="--device must be auto, cpu or cuda"):
        ModelConfig(device="tpu").validate()
    with pytest.raises(ConfigError, match="--dtype must be one of"):
        ModelConfig(dtype="fp8").validate()
    ModelConfig(name="tiny", dtype="int8").validate()
