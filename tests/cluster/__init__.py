"""Cluster tests: several server processes sharing one Redis."""
