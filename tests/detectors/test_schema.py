"""The `detectors:` YAML section, validated from each detector's settings dataclass."""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass

import pytest

from exporter.detectors import DetectorConfig, ExplodingConfig, LossSpikeConfig, Settings
from exporter.detectors.schema import keys, section, setting


def test_config_defaults_and_mapping() -> None:
    assert DetectorConfig.from_mapping({}, "c.yaml") == DetectorConfig()
    cfg = DetectorConfig.from_mapping(
        {"exploding": {"factor": 20, "window": 8}, "dead": {"enabled": False}, "max_findings_per_type": 3},
        "c.yaml",
    )
    assert cfg.exploding.factor == 20.0 and cfg.exploding.window == 8 and cfg.dead.enabled is False
    assert cfg.max_findings_per_type == 3 and cfg.vanishing.ratio == 1e-8


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"exploding": {"factor": "x"}}, "config.yaml: detectors.exploding.factor: expected a number > 1, got 'x'"),
        ({"exploding": {"factor": 1}}, "detectors.exploding.factor: expected a number > 1, got 1 (int)"),
        ({"vanishing": {"ratio": 2}}, "detectors.vanishing.ratio: expected a number between 0 and 1"),
        ({"dead": {"iterations": 0}}, "detectors.dead.iterations: expected an integer >= 1, got 0"),
        ({"dead": {"iterations": 2.5}}, "detectors.dead.iterations: expected an integer >= 1, got 2.5"),
        ({"dead": {"enabled": "yes"}}, "detectors.dead.enabled: expected true or false, got 'yes'"),
        ({"dead": {"iterations": True}}, "detectors.dead.iterations: expected an integer >= 1, got True"),
        ({"dead": {"treshold": 1}}, "detectors.dead.treshold: unknown key"),
        ({"exploding_grads": {}}, "detectors.exploding_grads: unknown detector"),
        ({"dead": 3}, "detectors.dead: expected a mapping, got 3 (int)"),
        ({"exploding": {"max_abs_diff": float("nan")}}, "detectors.exploding.max_abs_diff: expected a number > 0"),
    ],
)
def test_config_errors_name_key_and_expectation(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as e:
        DetectorConfig.from_mapping(data, "config.yaml")
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_findings_per_type": 0}, "c.yaml: detectors.max_findings_per_type: expected an integer >= 1, got 0"),
        ({"loss_spike": {"stall_iterations": -1}},
         "detectors.loss_spike.stall_iterations: expected an integer >= 0 (0 disables the stall check), got -1"),
        ({"loss_spike": {"min_improvement": 1}},
         "detectors.loss_spike.min_improvement: expected a number >= 0 and < 1"),
        ({"loss_saturated": {"tolerance": -0.1}}, "detectors.loss_saturated.tolerance: expected a number >= 0"),
        ({"dead": {"treshold": 1}}, "detectors.dead.treshold: unknown key (expected one of enabled, iterations)"),
        ({"x": {}}, "unknown detector (expected one of nonfinite, nan_loss, loss_saturated, exploding, vanishing, "
                    "zero_gradient, dead, loss_spike, max_findings_per_type)"),
        ([1], "c.yaml: detectors: expected a mapping, got [1] (list)"),
    ],
)
def test_every_key_has_its_rule(data: object, message: str) -> None:
    with pytest.raises(ValueError) as e:
        DetectorConfig.from_mapping(data, "c.yaml")  # type: ignore[arg-type]
    assert message in str(e.value)


def test_a_section_left_empty_in_yaml_is_all_defaults() -> None:
    assert DetectorConfig.from_mapping({"exploding": None, "nonfinite": {}}) == DetectorConfig()
    assert DetectorConfig.from_mapping(None) == DetectorConfig()


def test_constructed_overrides_compare_and_hash_by_value() -> None:
    a = DetectorConfig(loss_spike=LossSpikeConfig(stall_iterations=100))
    b = DetectorConfig.from_mapping({"loss_spike": {"stall_iterations": 100}})
    assert a == b and hash(a) == hash(b) and a != DetectorConfig()
    assert a.get(LossSpikeConfig).stall_iterations == 100 and a.get(ExplodingConfig) == ExplodingConfig()
    with pytest.raises(TypeError, match="is not a detector's settings"):
        DetectorConfig(exploding=LossSpikeConfig())
    with pytest.raises(AttributeError):
        a.max_findings_per_type = 3


def test_copies_and_pickles_are_equal() -> None:
    cfg = DetectorConfig.from_mapping({"dead": {"iterations": 5}, "max_findings_per_type": 2})
    for back in (copy.copy(cfg), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert back == cfg and back.dead.iterations == 5 and back.max_findings_per_type == 2


def test_to_dict_and_back() -> None:
    cfg = DetectorConfig.from_mapping({"exploding": {"window": 2}, "max_findings_per_type": 4})
    d = cfg.to_dict()
    assert list(d) == ["nonfinite", "nan_loss", "loss_saturated", "exploding", "vanishing", "zero_gradient", "dead",
                       "loss_spike", "max_findings_per_type"]
    assert d["exploding"] == {"enabled": True, "max_abs_diff": 1e4, "factor": 10.0, "window": 2}
    assert DetectorConfig.from_dict(d) == cfg


@dataclass(frozen=True)
class ToyConfig(Settings):
    limit: float = setting(5.0, lambda v: v > 0, "a number > 0")
    count: int = 3  # no rule: any integer


def test_a_new_settings_class_is_validated_from_its_declaration() -> None:
    assert keys(ToyConfig) == {"enabled": (bool, None), "limit": (float, keys(ToyConfig)["limit"][1]),
                               "count": (int, None)}
    assert section(ToyConfig, {"limit": 2, "count": 4.0}, "p") == ToyConfig(limit=2.0, count=4)
    with pytest.raises(ValueError, match=r"p\.limit: expected a number > 0, got -1"):
        section(ToyConfig, {"limit": -1}, "p")
    with pytest.raises(ValueError, match=r"p\.count: expected an integer, got 'x'"):
        section(ToyConfig, {"count": "x"}, "p")
