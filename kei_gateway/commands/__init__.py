"""Sub-commands of the ``kei-gateway`` CLI, one module per concern (see :mod:`kei_gateway.cli`)."""
