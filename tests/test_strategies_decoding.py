"""DecodedUpdates: replies decoded before any strategy, undecodable ones turned into failures."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from strategies import DecodedUpdates
from strategies.decoding import UNDECODABLE_ERROR_CODE
from tests.in_process_grid import set_task_identity


class Grid:
    def get_node_ids(self):
        return [11, 12]


def reply(node: int, asked_round: int, content: RecordDict) -> Message:
    asked = Message(RecordDict(), dst_node_id=node, message_type="train", group_id=str(asked_round))
    return Message(content, reply_to=asked)


def test_replies_are_decoded_against_the_model_sent_and_refusals_become_failures():
    set_task_identity()
    sent = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    seen: list[ArrayRecord] = []

    def decode(content: RecordDict, model: ArrayRecord) -> RecordDict:
        seen.append(model)
        delta = content.get("delta")
        if not isinstance(delta, ConfigRecord):
            raise ValueError("no delta")
        w = model["w"].numpy() + np.asarray(delta["values"], dtype=np.float32)
        return RecordDict({"arrays": ArrayRecord({"w": Array(w)}), "metrics": content["metrics"]})

    strategy = DecodedUpdates(FedAvg(fraction_train=1.0, min_available_nodes=2), decode)
    list(strategy.configure_train(1, sent, ConfigRecord(), Grid()))
    metrics = MetricRecord({"num-examples": 5})
    good = reply(
        11, 1, RecordDict({"delta": ConfigRecord({"values": [1.0, 2.0, 3.0]}), "metrics": metrics})
    )
    bad = reply(12, 1, RecordDict({"metrics": metrics}))

    arrays, _ = strategy.aggregate_train(1, [good, bad])

    assert arrays is not None
    np.testing.assert_array_equal(arrays["w"].numpy(), [1.0, 2.0, 3.0])
    assert all(model is sent for model in seen)
    refused = strategy._decoded(1, reply(12, 1, RecordDict({"metrics": metrics})), sent)
    assert refused.has_error() and refused.error.code == UNDECODABLE_ERROR_CODE
    assert refused.metadata.src_node_id == 12
    assert "no delta" in refused.error.reason
