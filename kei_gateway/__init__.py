"""kei-gateway: the LGWAN/intranet boundary gateway daemon for kei-car tax and MPN payment files."""

__version__ = "0.1.0"
__all__ = ["__version__"]
