"""How a screening wrapper hands its scores to the strategy it wraps, without knowing its class.

A wrapper in front (:class:`~strategies.AnomalyRejection`) has parsed every reply, checked its
values and scored its direction. A wrapped strategy that weights by the same scores
(:class:`~strategies.ReliabilityWeightedFedAvg`) would otherwise parse and score again, and
judge each device by other statistics than the ones that accepted it: a rejection wrapper judges
the direction among all the round's updates with its own thresholds, and among the accepted ones
after colluders were refused. Any strategy that implements :class:`ScoredAggregation` takes
the wrapper's tracker and its scores; for any other strategy the wrapper is a plain filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from flwr.app import Message

from strategies.arrays import ModelSpec
from strategies.reliability import ReliabilityTracker
from strategies.validation import ParsedReply


class ScoredReply(NamedTuple):
    """One accepted reply as the wrapper scored it."""

    parsed: ParsedReply
    direction_z: float
    anomaly_score: float
    update_norm: float


class ScoredReplies(NamedTuple):
    """The replies a wrapper accepted in one round, in device order, with their scores."""

    spec: ModelSpec
    entries: tuple[ScoredReply, ...]

    @classmethod
    def build(
        cls,
        spec: ModelSpec,
        parsed: Sequence[ParsedReply],
        direction_z: Sequence[float],
        anomaly: Sequence[float],
        norms: Sequence[float],
    ) -> ScoredReplies:
        """Pair the accepted replies with their scores and update norms."""
        entries = tuple(
            ScoredReply(p, float(z), float(a), float(u))
            for p, z, a, u in zip(parsed, direction_z, anomaly, norms, strict=True)
        )
        return cls(spec, entries)

    def covers(self, replies: Sequence[Message]) -> bool:
        """Whether ``replies`` are the very Messages scored, in the order they were handed over.

        Anything else (a layer in between that copied or changed a reply) must be screened again.
        """
        return len(replies) == len(self.entries) and all(
            m is e.parsed.message for m, e in zip(replies, self.entries, strict=True)
        )


@runtime_checkable
class ScoredAggregation(Protocol):
    """A strategy that aggregates replies a wrapper has already screened and scored.

    The wrapper installs its ``tracker`` (or takes the strategy's), calls :meth:`receive_scored`
    just before ``aggregate_train`` with the accepted replies, and passes on exactly those
    Messages. The strategy then neither parses nor scores them again, nor records the round in
    the tracker: the wrapper did, with its anomaly scores.
    """

    tracker: ReliabilityTracker

    def receive_scored(self, server_round: int, scored: ScoredReplies) -> None:
        """Take the scores of the replies about to be aggregated in ``server_round``."""
