"""Configuration: one YAML file loaded into frozen, typed objects, with every problem reported.

One module per job: `values` (the value types and checks the sections use), a module
per group of sections (`server`, `accounts`, `sets`, `lists`, `delivery`), `schema`
(the whole file and the checks that span sections), `loading` (reading the file,
ConfigError) and `source` (how a running component reads the configuration in force,
which SIGHUP swaps). The rest of smtprelay imports from here, not from the modules.
"""

from smtprelay.config.accounts import SANDBOX_QUOTA, IdentityConfig, QuotaConfig
from smtprelay.config.delivery import DelayConfig, RetryConfig
from smtprelay.config.ip_pools import IpPoolConfig, PoolAddressConfig, WarmupConfig
from smtprelay.config.lists import (
    NAME_PATTERN,
    ContactListConfig,
    SubscriptionStatus,
    TopicConfig,
    check_name,
)
from smtprelay.config.loading import (
    ENV_CONFIG,
    ConfigError,
    LoadedConfig,
    load_config,
    parse_config,
)
from smtprelay.config.schema import Config
from smtprelay.config.server import (
    HTTPConfig,
    ImageProxyRule,
    LimitsConfig,
    ListenerConfig,
    MachineDetectionConfig,
)
from smtprelay.config.sets import (
    NOTIFICATION_TYPES,
    ConfigurationSetConfig,
    EventDestinationConfig,
    RateThresholds,
    ReputationConfig,
    is_simulator_address,
)
from smtprelay.config.shaping import DestinationConfig, ShapingConfig
from smtprelay.config.source import ConfigSource, Derived
from smtprelay.config.values import (
    Duration,
    check_domain,
    check_selector,
    parse_host_port,
    parse_nameserver,
)

__all__ = [
    "ENV_CONFIG",
    "NAME_PATTERN",
    "NOTIFICATION_TYPES",
    "SANDBOX_QUOTA",
    "Config",
    "ConfigError",
    "ConfigSource",
    "ConfigurationSetConfig",
    "ContactListConfig",
    "DelayConfig",
    "Derived",
    "DestinationConfig",
    "Duration",
    "EventDestinationConfig",
    "HTTPConfig",
    "IdentityConfig",
    "ImageProxyRule",
    "IpPoolConfig",
    "LimitsConfig",
    "ListenerConfig",
    "LoadedConfig",
    "MachineDetectionConfig",
    "PoolAddressConfig",
    "QuotaConfig",
    "RateThresholds",
    "ReputationConfig",
    "RetryConfig",
    "ShapingConfig",
    "SubscriptionStatus",
    "TopicConfig",
    "WarmupConfig",
    "check_domain",
    "check_name",
    "check_selector",
    "is_simulator_address",
    "load_config",
    "parse_config",
    "parse_host_port",
    "parse_nameserver",
]
