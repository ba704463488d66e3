"""A strategy wrapper that decodes every train reply before the strategy it wraps sees it.

Update compression encodes on the device (a client mod) and must be undone on the server in
one place in front of any strategy, so that screening, scoring and aggregation judge the update
the device meant. ``DecodedUpdates`` is that place for a plain Flower app: it remembers the
model each round sent and hands every successful train reply's content, with that model, to a
``decode`` function (``clients.compression.decode_update`` with a codec, or any other); it knows
nothing of codecs, nor of the strategy it wraps. A reply whose content ``decode`` refuses
(``ValueError``) becomes an error reply, logged with the reason: every Flower strategy counts it
as a failure, and none sees its bytes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.wrapper import StrategyWrapper

log = logging.getLogger(__name__)

Decode = Callable[[RecordDict, ArrayRecord], RecordDict]
"""``decode(content, sent_model) -> content``; raises ``ValueError`` for content it refuses."""

UNDECODABLE_ERROR_CODE = 4203
"""Error code of a train reply whose content could not be decoded."""


class DecodedUpdates(StrategyWrapper):
    """Decodes train replies with ``decode`` before ``strategy`` aggregates them (see module).

    Parameters
    ----------
    strategy : Strategy
        Any Flower Message-API strategy.
    decode : Decode
        Turns a reply's content back into what ``strategy`` expects, given the model sent.
    keep_rounds : int
        How many rounds' models are remembered (a reply to an older round is refused).
    """

    def __init__(self, strategy: Strategy, decode: Decode, keep_rounds: int = 2) -> None:
        super().__init__(strategy)
        self.decode = decode
        self.keep_rounds = keep_rounds
        self._sent: dict[int, ArrayRecord] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember ``arrays`` for this round's replies, then configure as the strategy does."""
        self._sent[server_round] = arrays
        for old in [r for r in self._sent if r <= server_round - self.keep_rounds]:
            del self._sent[old]
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the decoded replies with the strategy."""
        sent = self._sent.get(server_round)
        return self.strategy.aggregate_train(
            server_round, [self._decoded(server_round, reply, sent) for reply in replies]
        )

    def _decoded(self, server_round: int, reply: Message, sent: ArrayRecord | None) -> Message:
        if reply.has_error():
            return reply
        try:
            if sent is None:
                raise ValueError(f"no model was sent in round {server_round}")
            content = self.decode(reply.content, sent)
        except ValueError as error:
            log.warning(
                "round %d: refusing the train reply of node %s: %s",
                server_round,
                reply.metadata.src_node_id,
                error,
            )
            # The same routing (source node, the message it answers), an error instead of content.
            return make_message(
                copy.copy(reply.metadata),
                error=Error(code=UNDECODABLE_ERROR_CODE, reason=f"cannot decode: {error}"),
            )
        reply.content = content
        return reply
