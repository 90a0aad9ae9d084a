"""Helpers shared by the tests: polling with a deadline, the real stack's addresses."""
