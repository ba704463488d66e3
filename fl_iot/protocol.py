"""The keys and message shapes the ServerApp and the ClientApp agree on.

A train reply carries three records::

    "arrays"  ArrayRecord   the updated weights (state-dict keys of the original module)
    "metrics" MetricRecord  num-examples, train-loss, train-steps, compute-time-s, wall-time-s,
                            plus trainer-specific scalars (epsilon, ...)
    "device"  ConfigRecord  device-id, device-class

An evaluate reply carries "metrics" (num-examples, loss, confusion) and "device". Identity lives in
a ConfigRecord so that Flower's strategies, which weighted-average every entry of the MetricRecord,
never average it. A device is not a Flower node: the server maps ``metadata.src_node_id`` to a
device id with a roll call (a ``query`` message) before the first round.
"""

from __future__ import annotations

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
DEVICE = "device"

NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_STEPS = "train-steps"
COMPUTE_TIME = "compute-time-s"
WALL_TIME = "wall-time-s"
EVAL_LOSS = "loss"
CONFUSION = "confusion"

DEVICE_ID = "device-id"
DEVICE_CLASS = "device-class"
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"

ROLL_CALL = "query.roll_call"
"""Message type of the roll call that maps Flower node ids to device ids."""
