import pytest

from engine.station.config import ConfigError, EngineConfig


def test_defaults_are_the_seed_window():
    c = EngineConfig()
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
        EngineConfig(**changes).validate()


def test_window_limit_follows_the_model():
    c = EngineConfig(window_seconds=12, context_seconds=8, stride_seconds=4)
    c.validate(max_duration_seconds=12)
    with pytest.raises(ConfigError):
        c.validate(max_duration_seconds=10)


def test_context_plus_stride_may_equal_window():
    EngineConfig(window_seconds=10, context_seconds=6, stride_seconds=4).validate()
