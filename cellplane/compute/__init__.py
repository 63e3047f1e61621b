"""The compute role: one manager per host, a virt driver, the instance state machine."""
