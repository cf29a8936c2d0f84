"""Test suite root; a package so tests can import the shared lab as tests.lab."""
