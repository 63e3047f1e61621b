"""Public gRPC servicers of a cell."""
