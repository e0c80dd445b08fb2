"""Configuration: YAML → typed, frozen objects (every key: docs/configuration.md)."""

from .load import ConfigError, build_config, load_config, parse_config
from .model import (AdminConfig, AgentConfig, BackendConfig, CarrierSettings, Config,
                    LoggingConfig, RecordingConfig, Rule, RuleAction, ServerConfig, StoreConfig,
                    TelemetryConfig, TelnyxSettings, TwilioSettings)

__all__ = [
    "AdminConfig", "AgentConfig", "BackendConfig", "CarrierSettings", "Config", "ConfigError",
    "LoggingConfig", "RecordingConfig", "Rule", "RuleAction", "ServerConfig", "StoreConfig",
    "TelemetryConfig", "TelnyxSettings", "TwilioSettings", "build_config", "load_config", "parse_config",
]
