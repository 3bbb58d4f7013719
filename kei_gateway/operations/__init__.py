"""Operations: purge, audit, certificates, status."""
