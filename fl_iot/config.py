"""Structured config schema (registered in Hydra's ConfigStore) and semantic validation.

The YAML files under ``conf/`` are validated twice: OmegaConf checks types against these
dataclasses while Hydra composes, and :func:`validate_config` checks the values that types cannot
express (fractions, counts, names of plugins). Both raise before any data is loaded or any Ray
worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from fl_iot.errors import ConfigError


@dataclass
class DatasetConfig:
    """Which data the devices hold and how it is split among them."""

    name: str = MISSING
    root: str | None = None
    partition: str = "natural"
    dirichlet_alpha: float = 0.5
    device_test_fraction: float = 0.2
    options: dict[str, Any] = field(default_factory=dict)


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
    """Server-side (device-level) DP; off while ``noise_multiplier`` is null (fl_iot.central_dp)."""

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
    seed: int = 0
    # Names of the config-group options a run was composed from ({"strategy": "trusted", ...}).
    # The CLI fills them in from Hydra; reports group runs by them.
    choices: dict[str, str] = field(default_factory=dict)


def register_configs() -> None:
    """Register the schema as ``base_config`` and the ``fl_iot.*`` resolvers (idempotent)."""
    ConfigStore.instance().store(name="base_config", node=Config)
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


def validate_config(cfg: DictConfig | Config) -> None:
    """Check the values of a composed config that its types cannot express.

    Raises
    ------
    ConfigError
        Naming the first bad value and what would be valid.
    """
    from clients import ATTACKS, TRAINERS, build_attack
    from fl_iot.data import DATASETS
    from fl_iot.privacy.profile import PrivacyProfile
    from fl_iot.tracking import SINK_FACTORIES

    scenario = cfg.scenario
    _require(
        scenario.num_rounds >= 1, f"scenario.num_rounds must be >= 1, got {scenario.num_rounds}"
    )
    for key in ("fraction_train", "fraction_evaluate"):
        value = scenario[key] if isinstance(scenario, DictConfig) else getattr(scenario, key)
        _require(0.0 < value <= 1.0, f"scenario.{key} must be in (0, 1], got {value}")
    _require(
        scenario.num_devices >= 2, f"scenario.num_devices must be >= 2, got {scenario.num_devices}"
    )
    _require(
        scenario.min_train_devices >= 1,
        f"scenario.min_train_devices must be >= 1, got {scenario.min_train_devices}",
    )
    DATASETS.get(scenario.dataset.name)
    _validate_device_mix(cfg)
    build_attack(cfg.attack.name, OmegaConf.to_container(cfg.attack.options, resolve=True))  # type: ignore[arg-type]
    _require(
        0.0 <= cfg.attack.fraction <= 1.0,
        f"attack.fraction must be in [0, 1], got {cfg.attack.fraction}: that would make more "
        "attackers than devices"
        if cfg.attack.fraction > 1.0
        else f"attack.fraction must be in [0, 1], got {cfg.attack.fraction}",
    )
    _require(
        cfg.attack.name != "none" or cfg.attack.fraction == 0.0,
        f"attack.fraction={cfg.attack.fraction} needs an attack; choose attack=<name> from: "
        f"{', '.join(n for n in ATTACKS.names() if n != 'none')}",
    )
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
    _require(
        cfg.engine.num_cpus_per_client > 0,
        f"engine.num_cpus_per_client must be positive, got {cfg.engine.num_cpus_per_client}",
    )
    for name, device_class in cfg.device_classes.items():
        TRAINERS.get(trainer_of(cfg, name))  # type: ignore[arg-type]
        PrivacyProfile.from_mapping(privacy_profile_of(cfg, name))  # type: ignore[arg-type]
        _require(device_class.batch_size >= 1, f"device_classes.{name}.batch_size must be >= 1")
        _require(device_class.local_epochs >= 1, f"device_classes.{name}.local_epochs must be >= 1")
        _require(
            device_class.relative_speed > 0,
            f"device_classes.{name}.relative_speed must be positive",
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
        _require(share >= 0, f"scenario.device_mix.{name} must be >= 0, got {share}")
    _require(sum(mix.values()) > 0, "scenario.device_mix shares sum to 0")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python containers (for JSON and W&B)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}
