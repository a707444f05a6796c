"""Test plugin module with no hooks: importing it is the whole point (tests check it is NOT imported)."""
