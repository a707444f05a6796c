"""A task module that calls sys.exit() when imported (a script with command-line parsing at module level)."""

import sys

sys.exit("tests.tasks.exits_on_import exits when imported")
