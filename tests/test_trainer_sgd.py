from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from clients.trainer import MomentumSGD
from tests.conftest import REPO_ROOT


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(1, 4, 5), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28, 3)
    )


@pytest.mark.parametrize(
    ("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-4), (0.0, 1e-3)]
)
def test_momentum_sgd_steps_bit_identically_to_torch_optim_sgd(momentum, weight_decay):
    ours, theirs = _model(0), _model(0)
    optimizer = MomentumSGD(list(ours.parameters()), 0.05, momentum, weight_decay)
    reference = torch.optim.SGD(
        theirs.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay
    )
    generator = torch.Generator().manual_seed(1)
    for _ in range(30):
        x = torch.randn(8, 1, 32, generator=generator)
        y = torch.randint(0, 3, (8,), generator=generator)
        for model, step in ((ours, optimizer), (theirs, reference)):
            step.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            step.step()
    expected = theirs.state_dict()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_a_parameter_without_gradient_is_left_alone():
    frozen, trained = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimizer = MomentumSGD([frozen, trained], 0.1, 0.9, 1e-2)
    (trained * 3).sum().backward()
    optimizer.step()
    assert torch.equal(frozen, torch.ones(2))
    assert not torch.equal(trained, torch.ones(2))


@pytest.mark.e2e
def test_standard_training_does_not_import_torch_dynamo():
    """A fresh ClientApp process per message must not pay for TorchDynamo's import."""
    script = """
import sys
import numpy as np
import torch
from flwr.app import RecordDict
from clients.data import LabeledData
from clients.trainer import StandardTrainer, TrainSettings
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2))
data = LabeledData(np.random.rand(16, 6).astype(np.float32), np.arange(16) % 2)
settings = TrainSettings(local_epochs=1, max_steps=None, batch_size=4, learning_rate=0.1,
                         momentum=0.9, weight_decay=0.0, seed=0)
report = StandardTrainer().train(model, data, settings, RecordDict())
assert report.steps == 4, report
print("torch._dynamo" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
