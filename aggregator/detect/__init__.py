"""Detection: Sigma rules compiled to in-process predicates, rate anomalies, and alerts."""
