"""The HTTP protocol: a streaming reverse proxy with token identity, guardrails, masking and HAR export."""
