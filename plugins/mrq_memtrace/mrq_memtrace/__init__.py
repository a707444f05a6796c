"""mrq-memtrace: find the job that leaks memory.

With one greenlet (``mrq-worker --trace_memory --greenlets 1``), each job's growth: object types that grew
(objgraph), ``memory_diff`` (resident memory), and with ``--trace_memory_type`` a graph of what keeps a leaked
object alive. With many greenlets (``--memtrace_mode tracemalloc``), the allocation sites whose retained memory
keeps growing over the worker's life.
"""

__version__ = "1.0.0"
