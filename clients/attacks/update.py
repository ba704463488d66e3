"""Model-poisoning attacks that need nothing beyond the attacker's own honest update.

Every attack here works on the update ``delta = local - global`` of the float arrays and sends
``global + crafted_delta``; integer buffers pass through honestly (see :func:`is_float`).
"""

from __future__ import annotations

import numpy as np

from clients.attacks.base import (
    ATTACKS,
    Arrays,
    Attack,
    AttackContext,
    AttackedUpdate,
    apply_deltas,
    deltas,
    real_option,
)


@ATTACKS.decorator("sign_flip")
class SignFlip(Attack):
    """Send the honest update with its sign reversed: ``global - scale * (local - global)``.

    The classic sign-flipping baseline of Byzantine-robustness studies (Li et al., "RSA:
    Byzantine-Robust Stochastic Aggregation Methods for Distributed Learning from Heterogeneous
    Datasets", AAAI 2019; the "bit-flipping" attack of Karimireddy et al., "Learning from History
    for Byzantine Robust Optimization", ICML 2021). It pushes the global model uphill on the
    attacker's loss; a mean breaks once the flipped updates outweigh the honest ones.

    Parameters
    ----------
    scale : float, default 1.0
        Length of the flipped update relative to the honest one (> 0).
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = real_option("sign_flip", "scale", scale)

    def poison_update(
        self,
        global_arrays: Arrays,
        local_arrays: Arrays,
        num_examples: int,
        rng: np.random.Generator,
        context: AttackContext | None = None,
    ) -> AttackedUpdate:
        """Send ``global - scale * (local - global)`` with the true sample count."""
        flipped = {k: -self.scale * d for k, d in deltas(global_arrays, local_arrays).items()}
        return AttackedUpdate(apply_deltas(global_arrays, local_arrays, flipped), num_examples)


@ATTACKS.decorator("gaussian")
class Gaussian(Attack):
    """Replace the update by Gaussian noise: ``global + N(0, std^2)`` per coordinate.

    The "Gaussian attack" baseline (Blanchard et al., "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017; the GAUSS attack of the FLANDERS baseline,
    Gabrielli et al. 2023). The noise replaces the *update*, not the weights, so its size compares
    with honest updates (typically 1e-3 to 1e-1 per coordinate). It is seeded per device and round.

    Parameters
    ----------
    std : float, default 1.0
        Standard deviation of the noise (> 0).
    """

    def __init__(self, std: float = 1.0) -> None:
        self.std = real_option("gaussian", "std", std)

    def poison_update(
        self,
        global_arrays: Arrays,
        local_arrays: Arrays,
        num_examples: int,
        rng: np.random.Generator,
        context: AttackContext | None = None,
    ) -> AttackedUpdate:
        """Send ``global + noise`` with the true sample count."""
        noise = {
            k: rng.normal(0.0, self.std, size=d.shape)
            for k, d in deltas(global_arrays, local_arrays).items()
        }
        return AttackedUpdate(apply_deltas(global_arrays, local_arrays, noise), num_examples)


@ATTACKS.decorator("scaling")
class Scaling(Attack):
    """Send a boosted update ``global + factor * (local - global)``.

    Model replacement by boosting (Bagdasaryan et al., "How To Backdoor Federated Learning",
    AISTATS 2020, who scale by ``n / eta`` so that one update survives averaging; Bhagoji et al.,
    "Analyzing Federated Learning through an Adversarial Lens", ICML 2019, "explicit boosting").
    Here the update is honest, so the attack tests how much one device can move a mean; bounded
    norms (clipping, Krum's distances) are the defence.

    Parameters
    ----------
    factor : float, default 10.0
        Boost applied to the honest update (> 0).
    """

    def __init__(self, factor: float = 10.0) -> None:
        self.factor = real_option("scaling", "factor", factor)

    def poison_update(
        self,
        global_arrays: Arrays,
        local_arrays: Arrays,
        num_examples: int,
        rng: np.random.Generator,
        context: AttackContext | None = None,
    ) -> AttackedUpdate:
        """Send ``global + factor * (local - global)`` with the true sample count."""
        boosted = {k: self.factor * d for k, d in deltas(global_arrays, local_arrays).items()}
        return AttackedUpdate(apply_deltas(global_arrays, local_arrays, boosted), num_examples)


@ATTACKS.decorator("weight_inflation")
class WeightInflation(Attack):
    """Send the honest update but claim ``factor`` times the true sample count.

    FedAvg weights each update by its self-reported ``num-examples`` (McMahan et al.,
    "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017) and
    cannot verify it; an inflated count lets one device dominate the mean, and any reliability or
    quality weighting built on reported counts. No canonical paper names this attack ("lying about
    sample count"). The update itself is honest, so distance-based defences do not see it.

    Parameters
    ----------
    factor : float, default 100.0
        Multiplier on the reported sample count (> 0); the count is rounded to an integer >= 1.
    """

    def __init__(self, factor: float = 100.0) -> None:
        self.factor = real_option("weight_inflation", "factor", factor)

    def poison_update(
        self,
        global_arrays: Arrays,
        local_arrays: Arrays,
        num_examples: int,
        rng: np.random.Generator,
        context: AttackContext | None = None,
    ) -> AttackedUpdate:
        """Send the honest arrays with ``round(num_examples * factor)`` examples."""
        return AttackedUpdate(local_arrays, max(1, round(num_examples * self.factor)))
