"""A task module that raises when imported."""

raise RuntimeError("tests.tasks.raises_on_import raises when imported")
