"""cloudtrail-aggregator: every CloudTrail record of an AWS Organization, once, proven."""

__version__ = "0.1.0"
