"""Configuration: read a YAML file, interpolate ``${VAR}`` secrets, validate strictly. No network
I/O happens here.

* :mod:`aggregator.config.loading`: the file, interpolation, every problem with its path;
* :mod:`aggregator.config.settings`: the typed sections (:mod:`aggregator.config.normalize`
  holds the ``normalize:`` section, owned by the normalizer);
* :mod:`aggregator.config.schema`: the JSON Schema (``python -m aggregator.config``).

The names below are the package's interface.
"""

from aggregator.config.loading import ConfigError, interpolate, load_settings, parse_settings
from aggregator.config.settings import (
    AccountDiscovery,
    ArchiveDigestSettings,
    ArchiveSettings,
    AuditSettings,
    AwsSettings,
    CollectSettings,
    DetectSettings,
    ForwardSettings,
    LookupSettings,
    NotificationSettings,
    ReconcileSettings,
    ServiceSettings,
    Settings,
    ShardSettings,
    shard_state_path,
)

__all__ = [
    "AccountDiscovery",
    "ArchiveDigestSettings",
    "ArchiveSettings",
    "AuditSettings",
    "AwsSettings",
    "CollectSettings",
    "ConfigError",
    "DetectSettings",
    "ForwardSettings",
    "LookupSettings",
    "NotificationSettings",
    "ReconcileSettings",
    "ServiceSettings",
    "Settings",
    "ShardSettings",
    "interpolate",
    "load_settings",
    "parse_settings",
    "shard_state_path",
]
