"""Configuration: the schema declared once, loading with every problem reported, rendering.

``read_config(path)`` reads a file; ``config_from_string(text)`` parses text (tests use
it and never touch disk); ``check_files(config)`` checks the keys and certificates named;
``load_config(path)`` does all three; ``restart_needed(old, new)`` names what a reload
cannot apply, as the schema declares it.
"""

from kei_gateway.config._kinds import HostPort, format_duration, parse_duration
from kei_gateway.config._load import (
    CREDENTIALS_ENV, Config, ConfigError, ConfigProblem, Listeners, check_files, config_from_string,
    load_config, read_config,
)
from kei_gateway.config._reload import restart_needed
from kei_gateway.config._render import configuration_markdown, example_toml
from kei_gateway.config._schema import (
    FLOW_SECTIONS, INBOUND_FLOWS, LOCAL_FLOWS, OUTBOUND_FLOWS, GatewaySection, InboundFlowSection, ListenerSection,
    MetricsListenerSection, OutboundFlowSection, PeerSection, ResultsFlowSection, RetryPolicy,
)

__all__ = [
    "Config", "ConfigError", "ConfigProblem", "Listeners", "config_from_string", "read_config",
    "check_files", "load_config", "CREDENTIALS_ENV", "HostPort", "parse_duration", "format_duration",
    "example_toml", "configuration_markdown", "FLOW_SECTIONS", "INBOUND_FLOWS", "LOCAL_FLOWS",
    "OUTBOUND_FLOWS", "GatewaySection", "InboundFlowSection", "OutboundFlowSection",
    "ResultsFlowSection", "PeerSection", "RetryPolicy", "MetricsListenerSection", "restart_needed",
    "ListenerSection",
]
