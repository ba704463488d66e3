"""The structured schema: scenarios get exactly their fleet, and every field refuses bad values.

The sweep tests walk the dataclasses of ``fl_iot.config`` so that a field added later is checked
without anyone remembering to add a case: every numeric field gets out-of-range values, every
name field an unknown name, every schema section an unknown key. Each bad value must raise one
ConfigError that names the field, from ``validate_config``, before anything is loaded or started.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Iterator

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from fl_iot import config as schema
from fl_iot.config import STRATEGY_NODE_MINIMUMS, STRATEGY_OPTION_RANGES, validate_config
from fl_iot.errors import ConfigError
from fl_iot.federation import build_federation
from fl_iot.run_config import CONF_DIR, compose_config


@pytest.fixture(autouse=True)
def _fresh_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def compose(*overrides: str) -> DictConfig:
    """A composed config of our own: compose_config returns one cached object per overrides."""
    GlobalHydra.instance().clear()
    return copy.deepcopy(compose_config(tuple(overrides)))


SCENARIOS = sorted(p.stem for p in (CONF_DIR / "scenario").glob("*.yaml"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_scenario_fleet_is_exactly_the_mix_its_yaml_names(scenario):
    own_mix = yaml.safe_load((CONF_DIR / "scenario" / f"{scenario}.yaml").read_text())["device_mix"]
    cfg = compose(f"scenario={scenario}")

    assert OmegaConf.to_container(cfg.scenario.device_mix) == own_mix
    keys = [f"device-{i}" for i in range(cfg.scenario.num_devices)]
    federation = build_federation(keys, dict(cfg.scenario.device_mix), 0.0, cfg.seed)
    assert set(federation.class_counts()) <= {name for name, share in own_mix.items() if share}
    assert sum(federation.class_counts().values()) == cfg.scenario.num_devices


def test_the_schema_has_no_default_mix_to_merge_into_a_scenario():
    assert OmegaConf.is_missing(OmegaConf.structured(schema.ScenarioConfig), "device_mix")


# ---- the sweep over the schema -------------------------------------------------------------


def _numeric_kind(annotation: object) -> type | None:
    """``int`` or ``float`` for a field typed ``int``, ``float`` or either ``| None``."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    for candidate in (annotation, *options):
        if candidate in (int, float):
            return candidate  # type: ignore[return-value]
    return None


def numeric_fields(cfg: DictConfig) -> Iterator[tuple[str, type]]:
    """``(dotted key, int or float)`` of every numeric field of the composed config's schema."""

    def walk(node: DictConfig, cls: type, path: str) -> Iterator[tuple[str, type]]:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            hint, key = hints[field.name], f"{path}{field.name}"
            sub = OmegaConf.get_type(node, field.name)
            if dataclasses.is_dataclass(sub):
                yield from walk(node[field.name], sub, f"{key}.")  # type: ignore[arg-type]
            elif typing.get_origin(hint) is dict:
                value_type = typing.get_args(hint)[1]
                for name in node[field.name]:
                    if dataclasses.is_dataclass(value_type):
                        yield from walk(node[field.name][name], value_type, f"{key}.{name}.")
                    elif (kind := _numeric_kind(value_type)) is not None:
                        yield f"{key}.{name}", kind
            elif (kind := _numeric_kind(hint)) is not None and hint is not bool:
                yield key, kind

    yield from walk(cfg, schema.Config, "")


def schema_sections(cfg: DictConfig) -> Iterator[str]:
    """The dotted key of every node the schema types with a dataclass ("" for the root)."""

    def walk(node: DictConfig, path: str) -> Iterator[str]:
        if dataclasses.is_dataclass(OmegaConf.get_type(node)):
            yield path
        for key, value in node.items_ex(resolve=False):
            if isinstance(value, DictConfig):
                yield from walk(value, f"{path}{key}.")

    yield from walk(cfg, "")


# Upper bounds, which a negative value does not probe.
TOO_BIG = {
    "seed": 2**32,
    "scenario.fraction_train": 1.5,
    "scenario.fraction_evaluate": 1.01,
    "scenario.min_train_devices": 10_000,
    "scenario.min_evaluate_devices": 10_000,
    "scenario.dataset.device_test_fraction": 1.0,
    "scenario.optimizer.momentum": 1.0,
    "attack.fraction": 1.5,
    "privacy.central.delta": 1.0,
    "fleet.start_hour": 24,
    "fleet.failure_rate": 1.5,
    "fleet.flaky_fraction": 1.5,
    "fleet.flaky_failure_rate": 1.5,
    "fleet.classes.wearable.mid_training_failure": 1.5,
    "fleet.classes.wearable.link.break_probability": 1.5,
    "fleet.classes.wearable.battery.min_level": 1.5,
    "fleet.classes.wearable.availability.jitter_h": 13,
    "gateways.device_fraction": 1.5,
}


def bad_values(key: str, kind: type) -> list[object]:
    values: list[object] = [-1]
    if kind is float:
        values += [math.nan, math.inf, -math.inf]
    if key in TOO_BIG:
        values.append(TOO_BIG[key])
    if key.endswith(".privacy.delta"):
        values.append(1.0)
    return values


def central_dp_config() -> DictConfig:
    # Central DP's fields only matter (and noise_multiplier is only set) with privacy=central_dp,
    # and the fleet's per-class conditions with fleet=realistic.
    return compose("privacy=central_dp", "fleet=realistic")


def test_the_sweep_reaches_every_part_of_the_schema():
    keys = {key for key, _ in numeric_fields(central_dp_config())}

    assert {
        "seed",
        "scenario.num_devices",
        "scenario.dataset.dirichlet_alpha",
        "scenario.optimizer.learning_rate",
        "scenario.device_mix.wearable",
        "device_classes.microcontroller_sensor.memory_limit_mb",
        "device_classes.wearable.privacy.delta",
        "privacy.target_epsilon",
        "privacy.central.clipping_norm",
        "attack.fraction",
        "engine.round_timeout_s",
        "fleet.classes.wearable.link.uplink_kbps.sigma",
        "fleet.classes.smartphone.battery.drain_per_hour",
        "rounds.max_staleness",
    } <= keys
    assert len(keys) > 60


def test_every_numeric_field_refuses_out_of_range_values_naming_the_field():
    cfg = central_dp_config()
    missed = []
    for key, kind in numeric_fields(cfg):
        original = OmegaConf.select(cfg, key)
        for value in bad_values(key, kind):
            OmegaConf.update(cfg, key, value)
            try:
                validate_config(cfg)
            except ConfigError as error:
                if key not in str(error):
                    missed.append((key, value, f"message names another field: {error}"))
            else:
                missed.append((key, value, "accepted"))
            finally:
                OmegaConf.update(cfg, key, original)
    validate_config(cfg)  # every value was put back

    assert missed == []


NAME_FIELDS = [
    ("scenario.dataset.name", "mitbih"),
    ("scenario.dataset.partition", "dirichlet"),
    ("device_classes.wearable.trainer", "standard"),
    ("device_classes.home_hub.trainer", "standard"),
    ("attack.name", "sign_flip"),
    ("tracking.wandb.mode", "offline"),
    ("gateways.mode", "aggregate"),
]
"""Each name field of the schema and one valid choice its message must list."""


@pytest.mark.parametrize(("key", "valid"), NAME_FIELDS)
def test_every_name_field_refuses_an_unknown_name_listing_the_valid_ones(key, valid):
    cfg = compose()
    OmegaConf.update(cfg, key, "no_such_thing")

    with pytest.raises(ConfigError, match="no_such_thing") as raised:
        validate_config(cfg)
    assert valid in str(raised.value)


def test_an_unknown_sink_or_device_class_is_refused_listing_the_valid_ones():
    cfg = compose()
    cfg.tracking.sinks = ["console", "fax"]
    with pytest.raises(ConfigError, match=r"unknown sink 'fax'.*jsonl"):
        validate_config(cfg)
    cfg = compose()
    with open_dict(cfg):
        cfg.scenario.device_mix.toaster = 1.0
    with pytest.raises(ConfigError, match=r"unknown device class 'toaster'.*wearable"):
        validate_config(cfg)


def test_every_schema_section_refuses_an_unknown_key():
    sections = list(schema_sections(compose()))
    assert {"", "scenario.", "scenario.optimizer.", "device_classes.wearable.privacy."} <= set(
        sections
    )
    for section in sections:
        cfg = compose()
        with open_dict(cfg):  # what Hydra's +key=value does
            OmegaConf.update(cfg, f"{section}bogus_key", 1, force_add=True)
        with pytest.raises(ConfigError, match=f"unknown key {section}bogus_key; valid keys"):
            validate_config(cfg)


STRATEGIES = sorted(p.stem for p in (CONF_DIR / "strategy").glob("*.yaml"))


def strategy_options(node: DictConfig, path: str = "strategy") -> Iterator[str]:
    """Dotted keys of the known Flower parameters in a strategy config, nested ones included."""
    for key, value in node.items():
        if isinstance(value, DictConfig):
            yield from strategy_options(value, f"{path}.{key}")
        elif key in STRATEGY_OPTION_RANGES or key in STRATEGY_NODE_MINIMUMS:
            yield f"{path}.{key}"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_known_flower_strategy_options_are_checked(strategy):
    base = compose(f"strategy={strategy}", "scenario.num_devices=20")
    keys = list(strategy_options(base.strategy))
    assert keys, strategy
    for key in keys:
        bad: list[object] = [-1]
        if key.rsplit(".", 1)[-1] in STRATEGY_NODE_MINIMUMS:
            bad.append(21)  # more nodes than the fleet: Flower would wait for ever
        for value in bad:
            cfg = copy.deepcopy(base)
            OmegaConf.update(cfg, key, value)
            with pytest.raises(ConfigError, match=f"{key} must be"):
                validate_config(cfg)
