"""The ``cellplane`` command."""
