"""The runtime: the composition root, daemon plumbing, sdnotify, journal, metrics, blocking pool, listeners, health."""
