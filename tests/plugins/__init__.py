"""Small MRQ plugins used by the test suite (enabled by dotted path: ``--plugins tests.plugins.recorder``)."""
