"""fl-iot: federated learning on IoT fleets, composed with Hydra and run on Flower."""

__version__ = "0.1.0"
