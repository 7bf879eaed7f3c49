"""The package version: part of every cache key, so a new release recomputes rather than trusts."""

__version__ = "0.1.0"
