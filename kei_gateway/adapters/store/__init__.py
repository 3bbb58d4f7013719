"""The encrypted store (SPEC §7): key files, the blob format, the filesystem store."""
