"""Generated protobuf and gRPC stubs for cellplane.v1 (do not edit)."""
