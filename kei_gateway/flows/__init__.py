"""File flows (SPEC §1): the pure rules of transfers, and the machinery that moves files."""
