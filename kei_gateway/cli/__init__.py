"""The ``kei-gateway`` command line: the parser (:mod:`kei_gateway.cli.main`) and one module per sub-command."""
