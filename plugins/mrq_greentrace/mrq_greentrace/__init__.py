"""mrq-greentrace: which job eats the CPU, and which one blocks the others.

Per job: CPU time of its greenlets and their switches (``time`` and ``switches`` on the job document), runs
that held the gevent hub longer than ``--trace_greenlets_block_ms`` with the line that blocked, and, for the
tasks named by ``--profile_tasks``, a cProfile of each run. Enable with ``mrq-worker --plugins greentrace``
or ``--trace_greenlets``.
"""

__version__ = "1.0.0"
