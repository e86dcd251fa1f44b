"""Real backends for tests: PostgreSQL, OpenSSH sshd, an HTTP app and an OIDC issuer."""
