"""A Flower ``Grid`` that delivers messages to ClientApps in this process, for fast server tests.

It stands in for the Simulation Engine in tests of the round loop: same messages, same ClientApp
handlers, no Ray. ``faults`` make chosen nodes fail (error reply) or stay silent (no reply).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


def set_task_identity() -> None:
    """Messages can only be built inside a Flower task; pretend to be one."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1


class OfflineGrid(Grid):
    """A grid that only sends and receives: no run, no separate push and pull."""

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:  # type: ignore[override]
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    @staticmethod
    def push(message: Message) -> None:
        """Give ``message`` an id, as Flower's grids do when they push it; replies name it."""
        message.metadata.__dict__["_message_id"] = str(uuid4())


class InProcessGrid(OfflineGrid):
    """Nodes ``1001, 1002, ...`` serving partitions ``0, 1, ...`` with one ClientApp."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        fault: Callable[[int, Message], str | None] | None = None,
    ) -> None:
        set_task_identity()
        self.client_app = client_app
        # Node ids deliberately not in partition order: the server must not rely on it.
        self.node_ids = [1000 + (7 * i) % num_nodes + 1 for i in range(num_nodes)]
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config={"partition-id": index, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for index, node_id in enumerate(self.node_ids)
        }
        self.fault = fault
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message at once; its reply waits to be pulled."""
        ids = []
        for message in messages:
            for reply in self.send_and_receive([message]):
                self._replies[reply.metadata.reply_to_message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver each message; a faulty node raises in its ClientApp or does not answer."""
        from flwr.app import Error

        replies = []
        for message in messages:
            self.push(message)
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            fault = (
                self.fault(self.contexts[node_id].node_config["partition-id"], message)
                if self.fault
                else None
            )  # type: ignore[arg-type]
            if fault == "silent":
                continue
            if fault == "error":
                replies.append(Message(Error(code=1, reason="device crashed"), reply_to=message))
                continue
            reply = self.client_app(message, self.contexts[node_id])
            replies.append(reply)
        # Replies arrive in an order unrelated to devices, as they do from Ray.
        return list(reversed(replies))
