"""Destinations. Each module speaks one wire protocol; see connectors/base.py for the contract.

The registry is one explicit dict: adding a connector touches its own module, one line here,
the settings union below (so ``config/schema.json`` knows it), an example config and its tests.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from connectors.base import Connector
from connectors.opensearch import OpenSearchConnector, OpenSearchSettings
from connectors.splunk_hec import SplunkHecConnector, SplunkHecSettings
from connectors.syslog import SyslogConnector, SyslogSettings

REGISTRY: dict[str, type[Connector]] = {
    "opensearch": OpenSearchConnector,
    "splunk_hec": SplunkHecConnector,
    "syslog": SyslogConnector,
}

AnyConnectorSettings = Annotated[
    OpenSearchSettings | SplunkHecSettings | SyslogSettings, Field(discriminator="type")
]


def build(settings: OpenSearchSettings | SplunkHecSettings | SyslogSettings) -> Connector:
    """A connector instance for one ``forward.connectors`` entry."""
    return REGISTRY[settings.type](settings)


__all__ = ["REGISTRY", "AnyConnectorSettings", "Connector", "build"]
