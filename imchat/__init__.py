"""imchat: a self-hosted terminal chat suite."""

__version__ = "0.1.0"
