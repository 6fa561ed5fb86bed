"""Destinations. Each module speaks one wire protocol; see connectors/base.py for the contract."""
