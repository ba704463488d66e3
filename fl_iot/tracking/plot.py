"""A PNG plot of the metrics per round."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from flwr.app import ArrayRecord

from fl_iot.records import RoundRecord, RunSummary
from fl_iot.tracking.base import RunInfo, Sink

PLOT_FILE = "metrics.png"


def _import_pyplot() -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot


class PlotSink(Sink):
    """Draws accuracy, macro-F1 and loss per round (central and federated) into ``metrics.png``."""

    def start(self, info: RunInfo) -> None:  # noqa: D102
        info.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = info.output_dir / PLOT_FILE
        self.title = (
            f"{info.config['scenario']['name']} / "
            + str(info.config["strategy"].get("_target_", "?")).rsplit(".", 1)[-1]
        )
        self.records: list[RoundRecord] = []
        # matplotlib takes a second to import: do it while the rounds run, not after them.
        threading.Thread(target=_import_pyplot, daemon=True).start()

    def resume(self, info: RunInfo, records: Sequence[RoundRecord]) -> None:  # noqa: D102
        self.start(info)
        self.records = list(records)

    def log_round(self, record: RoundRecord) -> None:  # noqa: D102
        self.records.append(record)

    def finish(self, summary: RunSummary, arrays: ArrayRecord | None) -> None:  # noqa: D102
        if not self.records:
            return
        _import_pyplot()
        import matplotlib.pyplot as plt

        rounds = [r.round for r in self.records]
        figure, (scores_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 4))
        for part in ("central", "federated"):
            for metric, style in (
                ("accuracy", "-"),
                ("macro_f1", "--"),
                ("balanced_accuracy", ":"),
            ):
                values = [getattr(r, part).get(metric) for r in self.records]
                if any(v is not None for v in values):
                    scores_axis.plot(rounds, values, style, marker="o", label=f"{part} {metric}")
            losses = [getattr(r, part).get("loss") for r in self.records]
            if any(v is not None for v in losses):
                loss_axis.plot(rounds, losses, marker="o", label=f"{part} loss")
        train_loss = [r.train.get("loss") for r in self.records]
        if any(v is not None for v in train_loss):
            loss_axis.plot(rounds, train_loss, marker="o", label="train loss")
        scores_axis.set(xlabel="round", ylabel="score", ylim=(0, 1), title=self.title)
        loss_axis.set(xlabel="round", ylabel="loss", title="loss")
        for axis in (scores_axis, loss_axis):
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(self.path, dpi=100)
        plt.close(figure)
