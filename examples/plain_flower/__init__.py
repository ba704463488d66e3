"""A plain Flower app using fl-iot's trusted aggregation strategies (see ``app``)."""
