"""cellplane: a federated compute control plane (a tree of cells joined by gRPC streams)."""

__version__ = "0.1.0"
