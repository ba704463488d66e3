"""Structured config schema (registered in Hydra's ConfigStore) and semantic validation.

The YAML files under ``conf/`` are validated twice: OmegaConf checks types against these
dataclasses while Hydra composes, and :func:`validate_config` checks the values that types cannot
express (fractions, counts, names of plugins). Both raise before any data is loaded or any Ray
worker starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from clients import ATTACKS, TRAINERS, build_attack
from clients.privacy.profile import PrivacyProfile
from fl_iot.compression import CompressionConfig, compression_by_class, downlink_compression
from fl_iot.data import DATASETS
from fl_iot.data.partition import PARTITION_SCHEMES
from fl_iot.errors import ConfigError
from fl_iot.fleet.conditions import FleetConfig
from fl_iot.fleet.trace import read_trace
from fl_iot.gateways import GatewaysConfig, gateway_assignment, gateway_mode
from fl_iot.rounds import LateUpdates, PartialUpdates, RoundMode, RoundsConfig
from fl_iot.tracking import SINK_FACTORIES
from strategies import AnomalyThresholds


@dataclass
class DatasetConfig:
    """Which data the devices hold and how it is split among them."""

    name: str = MISSING
    root: str | None = None
    partition: str = "natural"
    dirichlet_alpha: float = 0.5
    device_test_fraction: float = 0.2
    options: dict[str, Any] = field(default_factory=dict)
    cache: bool = False  # through the machine's dataset cache (fl_iot.data.cache)


@dataclass
class OptimizerConfig:
    """Local SGD parameters shared by every device of a scenario."""

    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class ScenarioConfig:
    """A fleet: data, model, devices and the shape of the federated run."""

    name: str = MISSING
    description: str = ""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: Any = MISSING
    num_devices: int = MISSING
    num_rounds: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_devices: int = 2
    min_evaluate_devices: int = 2
    central_evaluation: bool = True
    # No default: a default mapping would be merged with, not replaced by, the scenario's own mix
    # (Hydra merges mappings key by key), and every scenario would get its classes too.
    device_mix: dict[str, float] = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class PrivacyConfig:
    """A device class's differential-privacy profile (used by private trainers)."""

    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None


@dataclass
class DeviceClassConfig:
    """Compute, memory and privacy budget of one kind of IoT device."""

    name: str = MISSING
    trainer: str = "standard"
    local_epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    relative_speed: float = 1.0
    memory_limit_mb: float = 512.0
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    trainer_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CentralDPConfig:
    """Server-side DP per device (strategies.CentralDP); off while ``noise_multiplier`` is null."""

    noise_multiplier: float | None = None
    clipping_norm: float = 1.0
    delta: float = 1e-5
    max_weight_ratio: float = 1.0


@dataclass
class PrivacyPolicyConfig:
    """Fleet-wide differential-privacy policy (the ``privacy`` config group).

    ``local_dp`` trains every device class with DP-SGD under its own profile; without it a class
    can still opt in alone (``device_classes.<name>.trainer=dp-sgd``). ``target_epsilon``, when
    set, replaces every class's budget (privacy/utility sweeps use it). ``central`` adds
    server-side DP around the strategy.
    """

    local_dp: bool = False
    target_epsilon: float | None = None
    central: CentralDPConfig = field(default_factory=CentralDPConfig)


@dataclass
class AttackConfig:
    """Simulated attackers: which attack and what fraction of devices run it."""

    name: str = "none"
    fraction: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineConfig:
    """How the Simulation Engine runs the ClientApps."""

    num_cpus_per_client: float = 1.0
    num_cpus: int | None = None
    round_timeout_s: float = 3600.0
    # How long the roll call waits for every node to connect and say which devices it serves
    # before the run fails, naming the missing devices (nodes start in seconds: a missing one
    # is a node that is not coming, not a slow round).
    roll_call_timeout_s: float = 120.0
    # Keep the Ray session up after a run for the next run of the same process (a multirun's
    # next job), instead of paying ray.init and shutdown every job. See simulation.ray_session.
    keep_ray_alive: bool = True
    # Skip a run whose output directory already holds a completed summary.json of the same
    # config (a restarted sweep then only runs what is missing).
    skip_completed: bool = False


@dataclass
class WandbConfig:
    """Weights & Biases settings; ``mode`` follows ``wandb.init``."""

    project: str = "fl-iot"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TrackingConfig:
    """Where results go: local files always, W&B when ``wandb`` is among the sinks."""

    sinks: list[str] = field(
        default_factory=lambda: ["console", "jsonl", "summary", "plot", "checkpoint"]
    )
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    """The whole composed configuration of one run."""

    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    strategy: Any = MISSING
    device_classes: dict[str, DeviceClassConfig] = field(default_factory=dict)
    attack: AttackConfig = field(default_factory=AttackConfig)
    privacy: PrivacyPolicyConfig = field(default_factory=PrivacyPolicyConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    gateways: GatewaysConfig = field(default_factory=GatewaysConfig)
    seed: int = 0
    # The run directory of an interrupted run to continue (``fl-iot resume=<run dir>``): the run
    # then takes its config from that directory's checkpoint, and no other override is allowed.
    resume: str | None = None
    # Names of the config-group options a run was composed from ({"strategy": "trusted", ...}).
    # The CLI fills them in from Hydra; reports group runs by them.
    choices: dict[str, str] = field(default_factory=dict)


def register_configs() -> None:
    """Register the schema as ``base_config`` and the ``fl_iot.*`` resolvers (idempotent).

    Also ``strategy/thresholds/anomaly``: every field of :class:`strategies.AnomalyThresholds`
    with its default, which the anomaly-rejection strategy configs take as their ``thresholds``,
    so that the defaults live in the dataclass alone and each is set from the command line as
    ``strategy.thresholds.<field>=...``.
    """
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    store.store(
        group="strategy/thresholds",
        name="anomaly",
        node={"_target_": "strategies.AnomalyThresholds", **asdict(AnomalyThresholds())},
    )
    for name, resolver in (
        ("fl_iot.attackers_per_round", attackers_per_round),
        ("fl_iot.honest_per_round", honest_per_round),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


LOCAL_DP_TRAINER = "dp-sgd"


def trainer_of(cfg: DictConfig, device_class: str) -> str:
    """The trainer a device class uses under the fleet's privacy policy."""
    if cfg.privacy.local_dp:
        return LOCAL_DP_TRAINER
    return str(cfg.device_classes[device_class].trainer)


def privacy_profile_of(cfg: DictConfig, device_class: str) -> dict[str, Any]:
    """A device class's privacy profile, with the fleet-wide target epsilon applied if set."""
    profile = OmegaConf.to_container(cfg.device_classes[device_class].privacy, resolve=True)
    assert isinstance(profile, dict)
    if cfg.privacy.target_epsilon is not None:
        profile["target_epsilon"] = float(cfg.privacy.target_epsilon)
    return {str(k): v for k, v in profile.items()}


def devices_per_round(cfg: DictConfig) -> int:
    """Devices sampled per training round, as Flower's FedAvg computes it."""
    scenario = cfg.scenario
    return max(int(scenario.num_devices * scenario.fraction_train), scenario.min_train_devices)


def attackers_per_round(*, _root_: DictConfig) -> int:
    """Expected attackers among the devices sampled per round (Krum's and Bulyan's ``f``)."""
    return round(_root_.attack.fraction * devices_per_round(_root_))


def honest_per_round(*, _root_: DictConfig) -> int:
    """Expected honest devices per round (MultiKrum's number of updates to keep), at least 1."""
    return max(1, devices_per_round(_root_) - attackers_per_round(_root_=_root_))


WANDB_MODES = ("offline", "online", "disabled")
MAX_SEED = 2**32 - 1
"""Seeds are 32-bit: every generator fl-iot seeds (numpy, torch, ``random``) accepts them."""


def validate_config(cfg: DictConfig | Config) -> None:
    """Check the values of a composed config that its types cannot express.

    Every numeric field is checked against its range (NaN and infinity are refused wherever a
    finite number is meant), every name against its registry, and every section that the schema
    types against the schema's keys: Hydra's ``+key=value`` adds a key even to a struct config,
    and a misspelt key would otherwise be ignored without a word. Counts that the fleet bounds
    (``min_train_devices`` and the strategy's ``min_*_nodes``) are checked against
    ``num_devices``: Flower would wait for the missing devices for ever.

    Raises
    ------
    ConfigError
        Naming the first bad value and what would be valid.
    """
    if isinstance(cfg, DictConfig):
        _refuse_unknown_keys(cfg, "")
    _check("seed", cfg.seed, low=0, high=MAX_SEED)
    _validate_scenario(cfg)
    _validate_device_classes(cfg)
    _validate_device_mix(cfg)
    build_attack(cfg.attack.name, OmegaConf.to_container(cfg.attack.options, resolve=True))  # type: ignore[arg-type]
    _check(
        "attack.fraction",
        cfg.attack.fraction,
        low=0,
        high=1,
        hint=": that would make more attackers than devices" if cfg.attack.fraction > 1 else "",
    )
    _require(
        cfg.attack.name != "none" or cfg.attack.fraction == 0.0,
        f"attack.fraction={cfg.attack.fraction} needs an attack; choose attack=<name> from: "
        f"{', '.join(n for n in ATTACKS.names() if n != 'none')}",
    )
    _validate_privacy(cfg)
    _validate_fleet(cfg)
    _validate_rounds(cfg)
    if isinstance(cfg, DictConfig):
        compression_by_class(cfg)  # refuses an unknown codec, class or parameter
        downlink_compression(cfg)
        gateway_assignment(cfg)
        gateway_mode(cfg)
    for name in cfg.tracking.sinks:
        _require(
            name in SINK_FACTORIES,
            f"unknown sink {name!r} in tracking.sinks; valid choices: "
            f"{', '.join(sorted(SINK_FACTORIES))}",
        )
    _require(
        cfg.tracking.wandb.mode in WANDB_MODES,
        f"tracking.wandb.mode must be one of {', '.join(WANDB_MODES)}, "
        f"got {cfg.tracking.wandb.mode!r}",
    )
    engine = cfg.engine
    _check("engine.num_cpus_per_client", engine.num_cpus_per_client, low=0, low_open=True)
    _check("engine.num_cpus", engine.num_cpus, low=1, optional=True)
    _check("engine.round_timeout_s", engine.round_timeout_s, low=0, low_open=True)
    _check("engine.roll_call_timeout_s", engine.roll_call_timeout_s, low=0, low_open=True)
    if isinstance(cfg, DictConfig) and isinstance(cfg.get("strategy"), DictConfig):
        validate_strategy_options(cfg.strategy, cfg.scenario.num_devices)


def _validate_scenario(cfg: DictConfig | Config) -> None:
    scenario = cfg.scenario
    _check("scenario.num_rounds", scenario.num_rounds, low=1)
    _check("scenario.num_devices", scenario.num_devices, low=2)
    for key in ("fraction_train", "fraction_evaluate"):
        _check(f"scenario.{key}", getattr(scenario, key), low=0, high=1, low_open=True)
    for key in ("min_train_devices", "min_evaluate_devices"):
        _check(
            f"scenario.{key}",
            getattr(scenario, key),
            low=1,
            high=scenario.num_devices,
            high_name=f"scenario.num_devices={scenario.num_devices}",
            hint=": Flower would wait for more devices than the fleet has"
            if getattr(scenario, key) > scenario.num_devices
            else "",
        )
    dataset = scenario.dataset
    DATASETS.get(dataset.name)
    _require(
        dataset.partition in PARTITION_SCHEMES,
        f"unknown partition scheme {dataset.partition!r} in scenario.dataset.partition; valid "
        f"choices: {', '.join(PARTITION_SCHEMES)}",
    )
    _check("scenario.dataset.dirichlet_alpha", dataset.dirichlet_alpha, low=0, low_open=True)
    _check(
        "scenario.dataset.device_test_fraction",
        dataset.device_test_fraction,
        low=0,
        high=1,
        high_open=True,
    )
    optimizer = scenario.optimizer
    _check("scenario.optimizer.learning_rate", optimizer.learning_rate, low=0, low_open=True)
    _check("scenario.optimizer.momentum", optimizer.momentum, low=0, high=1, high_open=True)
    _check("scenario.optimizer.weight_decay", optimizer.weight_decay, low=0)


def _validate_device_classes(cfg: DictConfig | Config) -> None:
    _check(
        "privacy.target_epsilon", cfg.privacy.target_epsilon, low=0, low_open=True, optional=True
    )
    for name, device_class in cfg.device_classes.items():
        key = f"device_classes.{name}"
        TRAINERS.get(trainer_of(cfg, name))  # type: ignore[arg-type]
        try:
            PrivacyProfile.from_mapping(privacy_profile_of(cfg, name))  # type: ignore[arg-type]
        except ConfigError as error:
            text = str(error)
            raise ConfigError(
                f"{key}.{text}" if text.startswith("privacy.") else f"{key}: {text}"
            ) from None
        _check(f"{key}.local_epochs", device_class.local_epochs, low=1)
        _check(f"{key}.max_steps", device_class.max_steps, low=1, optional=True)
        _check(f"{key}.batch_size", device_class.batch_size, low=1)
        _check(f"{key}.relative_speed", device_class.relative_speed, low=0, low_open=True)
        _check(f"{key}.memory_limit_mb", device_class.memory_limit_mb, low=0, low_open=True)


def _validate_privacy(cfg: DictConfig | Config) -> None:
    central = cfg.privacy.central
    _check(
        "privacy.central.noise_multiplier",
        central.noise_multiplier,
        low=0,
        low_open=True,
        optional=True,
        hint="; null switches central DP off",
    )
    _check("privacy.central.clipping_norm", central.clipping_norm, low=0, low_open=True)
    _check("privacy.central.delta", central.delta, low=0, high=1, low_open=True, high_open=True)
    _check("privacy.central.max_weight_ratio", central.max_weight_ratio, low=1)


def _validate_fleet(cfg: DictConfig | Config) -> None:
    fleet = cfg.fleet
    _check("fleet.step_time_s", fleet.step_time_s, low=0)
    _check("fleet.start_hour", fleet.start_hour, low=0, high=24, high_open=True)
    _check("fleet.failure_rate", fleet.failure_rate, low=0, high=1)
    _check("fleet.flaky_fraction", fleet.flaky_fraction, low=0, high=1)
    _check("fleet.flaky_failure_rate", fleet.flaky_failure_rate, low=0, high=1)
    if fleet.trace is not None:
        read_trace(fleet.trace)  # refuses a missing or malformed trace, naming the row
    for name, conditions in fleet.classes.items():
        key = f"fleet.classes.{name}"
        _require(
            name in cfg.device_classes,
            f"unknown device class {name!r} in fleet.classes; valid choices: "
            f"{', '.join(sorted(cfg.device_classes))}",
        )
        _check(f"{key}.mid_training_failure", conditions.mid_training_failure, low=0, high=1)
        availability = conditions.availability
        if availability is not None:
            for window in availability.online_hours:
                ok = (
                    len(window) == 2
                    and all(isinstance(h, int | float) and math.isfinite(h) for h in window)
                    and 0 <= window[0] < window[1] <= window[0] + 24
                )
                _require(
                    ok,
                    f"{key}.availability.online_hours: each window must be [start, end] hours "
                    f"with 0 <= start < end <= start + 24, got {list(window)!r}",
                )
            _check(f"{key}.availability.jitter_h", availability.jitter_h, low=0, high=12)
            _check(
                f"{key}.availability.mean_online_s",
                availability.mean_online_s,
                low=0,
                low_open=True,
            )
            _check(f"{key}.availability.mean_offline_s", availability.mean_offline_s, low=0)
        link = conditions.link
        if link is not None:
            for part in ("uplink_kbps", "downlink_kbps", "latency_ms"):
                _check(f"{key}.link.{part}.median", getattr(link, part).median, low=0)
                _check(f"{key}.link.{part}.sigma", getattr(link, part).sigma, low=0, high=5)
            _check(f"{key}.link.break_probability", link.break_probability, low=0, high=1)
        battery = conditions.battery
        if battery is not None:
            _check(f"{key}.battery.min_level", battery.min_level, low=0, high=1)
            _check(f"{key}.battery.drain_per_hour", battery.drain_per_hour, low=0)
            _check(f"{key}.battery.drain_per_training", battery.drain_per_training, low=0)
            _check(f"{key}.battery.max_start_shortfall", battery.max_start_shortfall, low=0, high=1)


def _validate_rounds(cfg: DictConfig | Config) -> None:
    rounds = cfg.rounds
    for key, value, choices in (
        ("mode", rounds.mode, RoundMode),
        ("late_updates", rounds.late_updates, LateUpdates),
        ("partial_updates", rounds.partial_updates, PartialUpdates),
    ):
        valid = [c.value for c in choices]
        _require(value in valid, f"rounds.{key} must be one of {', '.join(valid)}, got {value!r}")
    _check("rounds.timeout_s", rounds.timeout_s, low=0, low_open=True)
    _check("rounds.deadline_s", rounds.deadline_s, low=0, low_open=True)
    num_devices = cfg.scenario.num_devices
    _check_fleet_count("rounds.target_replies", rounds.target_replies, num_devices, optional=True)
    _check("rounds.over_selection", rounds.over_selection, low=1)
    _check("rounds.max_staleness", rounds.max_staleness, low=0)
    _check("rounds.staleness_exponent", rounds.staleness_exponent, low=0)
    _check("rounds.max_wait_s", rounds.max_wait_s, low=0)
    _check("rounds.buffer_size", rounds.buffer_size, low=1, optional=True)
    _check("rounds.concurrency", rounds.concurrency, low=1, optional=True)
    if rounds.mode != RoundMode.FEDBUFF.value:
        return
    # Bounds that only bind where FedBuff uses them (smart_home's 6 devices and a default
    # buffer of 10 are fine under sync rounds).
    _check_fleet_count("rounds.buffer_size", rounds.buffer_size, num_devices, optional=True)
    _check_fleet_count(
        "rounds.concurrency",
        rounds.concurrency,
        num_devices,
        low=rounds.buffer_size or 1,
        optional=True,
        hint=": FedBuff needs at least buffer_size devices training at once",
    )


def _check_fleet_count(
    key: str, value: object, num_devices: int, low: int = 1, optional: bool = False, hint: str = ""
) -> None:
    """A count of devices: in ``[low, num_devices]``."""
    _check(
        key,
        value,
        low=low,
        high=num_devices,
        high_name=f"scenario.num_devices={num_devices}",
        optional=optional,
        hint=hint,
    )


def _validate_device_mix(cfg: DictConfig | Config) -> None:
    mix = cfg.scenario.device_mix
    known = sorted(cfg.device_classes)
    _require(len(mix) > 0, "scenario.device_mix is empty; name at least one device class")
    for name, share in mix.items():
        _require(
            name in cfg.device_classes,
            f"unknown device class {name!r} in scenario.device_mix; valid choices: "
            f"{', '.join(known)}",
        )
        _check(f"scenario.device_mix.{name}", share, low=0)
    _require(sum(mix.values()) > 0, "scenario.device_mix shares sum to 0")


STRATEGY_OPTION_RANGES: dict[str, dict[str, Any]] = {
    "fraction_train": {"low": 0, "high": 1},
    "fraction_evaluate": {"low": 0, "high": 1},
    "num_malicious_nodes": {"low": 0},
    "num_nodes_to_select": {"low": 1},
    "proximal_mu": {"low": 0},
    "eta": {"low": 0, "low_open": True},
    "eta_l": {"low": 0, "low_open": True},
    "tau": {"low": 0, "low_open": True},
    "beta_1": {"low": 0, "high": 1, "high_open": True},
    "beta_2": {"low": 0, "high": 1, "high_open": True},
    "server_learning_rate": {"low": 0, "low_open": True},
    "server_momentum": {"low": 0, "high": 1, "high_open": True},
    "q": {"low": 0},
    "client_learning_rate": {"low": 0, "low_open": True},
}
"""Ranges of Flower strategy parameters that Flower's constructors accept without checking.

A negative ``num_malicious_nodes`` makes Krum score with more neighbours than there are; a zero
``eta`` or ``server_learning_rate`` freezes the model. Keys are matched by name in every node of
the strategy config that has a ``_target_`` (fl-iot's strategies subclass Flower's and keep their
parameter names).
"""

STRATEGY_NODE_MINIMUMS = {"min_train_nodes": 1, "min_evaluate_nodes": 0, "min_available_nodes": 0}
"""Lower bounds of Flower's ``min_*_nodes``; the upper bound is the fleet's ``num_devices``."""


def validate_strategy_options(
    strategy: DictConfig, num_devices: int, path: str = "strategy"
) -> None:
    """Check the values of known Flower strategy parameters in a strategy config.

    Raises
    ------
    ConfigError
        Naming the first parameter out of its range.
    """
    if "_target_" in strategy:
        for key, value in strategy.items():
            key = str(key)
            if key in STRATEGY_OPTION_RANGES:
                _check(f"{path}.{key}", value, **STRATEGY_OPTION_RANGES[key])
            elif key in STRATEGY_NODE_MINIMUMS:
                _check(
                    f"{path}.{key}",
                    value,
                    low=STRATEGY_NODE_MINIMUMS[key],
                    high=num_devices,
                    high_name=f"scenario.num_devices={num_devices}",
                )
    for key, value in strategy.items():
        if isinstance(value, DictConfig):
            validate_strategy_options(value, num_devices, f"{path}.{key!s}")


def _refuse_unknown_keys(node: DictConfig, path: str) -> None:
    """Refuse keys that the dataclass behind ``node`` (and behind each sub-node) does not have."""
    if node._is_none():
        return
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node:
            _require(
                key in known,
                f"unknown key {path}{key!s}; valid keys of {path.rstrip('.') or 'the config'}: "
                f"{', '.join(known)}",
            )
    for key, value in node.items_ex(resolve=False):
        if isinstance(value, DictConfig):
            _refuse_unknown_keys(value, f"{path}{key!s}.")


def _check(
    key: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    high_name: str | None = None,
    hint: str = "",
) -> None:
    """Refuse ``value`` unless it is a finite number within the bounds (or None if optional)."""
    if value is None and optional:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and math.isfinite(value)  # type: ignore[arg-type]
    if ok and low is not None:
        ok = value > low if low_open else value >= low  # type: ignore[operator]
    if ok and high is not None:
        ok = value < high if high_open else value <= high  # type: ignore[operator]
    if ok:
        return
    top = high_name if high_name is not None else high
    if low is not None and high is not None:
        bounds = f"in {'(' if low_open else '['}{low}, {top}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f"{'>' if low_open else '>='} {low}"
        if not isinstance(value, int) or isinstance(value, bool):
            bounds = f"a finite number {bounds}"
    else:
        bounds = f"{'<' if high_open else '<='} {top}"
    raise ConfigError(
        f"{key} must be {bounds}{' (or null)' if optional else ''}, got {value!r}{hint}"
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python containers (for JSON and W&B)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}
