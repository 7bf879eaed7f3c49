"""Inputs: data sets, untrusted-file checks, parsers, the model zoo, exported programs, the
resolver of data and model choices, and example files."""
