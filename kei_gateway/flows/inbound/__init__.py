"""Inbound flows: peer (pull or push) → store → inbox / the tax system."""
