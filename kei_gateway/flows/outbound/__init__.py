"""Outbound flows: outbox → store → peer."""
