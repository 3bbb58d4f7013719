"""The pure core: transfer states and decisions, the inbound settle decision, results identity and reconcile (no reactor, clock, disk or SQL)."""
