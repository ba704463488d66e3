import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from clients.registry import Registry
from fl_iot.config import attackers_per_round, honest_per_round
from fl_iot.errors import ConfigError, UnknownNameError
from fl_iot.run_config import compose_config, hydra_overrides


@pytest.fixture(autouse=True)
def _fresh_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def test_default_config_composes_and_validates():
    cfg = compose_config(())

    assert cfg.scenario.name == "healthcare_wearables"
    assert cfg.strategy._target_ == "flwr.serverapp.strategy.FedAvg"
    assert cfg.strategy.fraction_train == cfg.scenario.fraction_train
    assert set(cfg.device_classes) == {
        "wearable",
        "smartphone",
        "vehicle_ecu",
        "industrial_gateway",
        "home_hub",
        "microcontroller_sensor",
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("scenario.fraction_train=1.5", "scenario.fraction_train must be in \\(0, 1\\], got 1.5"),
        ("scenario.fraction_evaluate=0", "scenario.fraction_evaluate must be in \\(0, 1\\], got 0"),
        ("scenario.num_rounds=0", "scenario.num_rounds must be >= 1, got 0"),
        ("scenario.num_devices=1", "scenario.num_devices must be >= 2, got 1"),
        ("attack.fraction=1.5", "got 1.5: that would make more attackers than devices"),
        ("attack.fraction=0.2", "needs an attack; choose attack=<name>"),
        ("scenario.dataset.name=imagenet", "unknown dataset 'imagenet'; valid choices: .*mitbih"),
        ("+scenario.device_mix.toaster=1", "unknown device class 'toaster'.*wearable"),
        (
            "device_classes.wearable.trainer=magic",
            "unknown trainer 'magic'; valid choices: .*standard",
        ),
        ("tracking.sinks=[console,fax]", "unknown sink 'fax' in tracking.sinks; valid choices"),
        ("tracking.wandb.mode=cloud", "tracking.wandb.mode must be one of offline, online"),
    ],
)
def test_bad_values_name_the_value_and_the_valid_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config((override,))


def test_krum_f_is_the_expected_attackers_among_the_sampled_devices():
    root = OmegaConf.create(
        {
            "attack": {"fraction": 0.2},
            "scenario": {"num_devices": 20, "fraction_train": 0.5, "min_train_devices": 2},
        }
    )

    assert attackers_per_round(_root_=root) == 2  # 20 devices * 0.5 sampled = 10, 20 % of 10
    assert honest_per_round(_root_=root) == 8


def test_strategy_configs_interpolate_the_resolvers():
    cfg = compose_config(("strategy=multikrum", "scenario.num_devices=20"))

    assert cfg.strategy.num_malicious_nodes == 0
    assert cfg.strategy.num_nodes_to_select == 10


def test_run_config_translates_to_hydra_overrides():
    overrides = hydra_overrides(
        {
            "scenario": "smart_home",
            "strategy": "fedmedian",
            "attack": "none",
            "tracking": "",
            "seed": 3,
            "data-root": "/data",
            "overrides": "scenario.num_rounds=2 'scenario.description=two words'",
        }
    )

    assert overrides == [
        "scenario=smart_home",
        "strategy=fedmedian",
        "attack=none",
        "seed=3",
        "scenario.dataset.root=/data",
        "scenario.num_rounds=2",
        "scenario.description=two words",
    ]


def test_registry_lists_valid_names_and_refuses_silent_replacement():
    registry: Registry[int] = Registry("widget", "fl_iot.test_widgets")
    registry.register("a", 1)

    with pytest.raises(UnknownNameError, match="unknown widget 'b'; valid choices: a"):
        registry.get("b")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", 2)
    registry.register("a", 2, force=True)
    assert registry.get("a") == 2


def test_registry_loads_third_party_entry_points(monkeypatch):
    from importlib import metadata

    registry: Registry[object] = Registry("widget", "fl_iot.test_widgets")
    entry_point = metadata.EntryPoint("third", "fl_iot.models:Mlp", "fl_iot.test_widgets")
    monkeypatch.setattr(
        "clients.registry.entry_points",
        lambda group: [entry_point] if group == "fl_iot.test_widgets" else [],
    )

    from fl_iot.models import Mlp

    assert registry.names() == ["third"]
    assert registry.get("third") is Mlp
