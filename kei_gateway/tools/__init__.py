"""Document and catalog generators (run by hand; the tests check their output is current)."""
