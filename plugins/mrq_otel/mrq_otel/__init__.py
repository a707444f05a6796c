"""mrq-otel: OpenTelemetry traces of MRQ jobs.

A producer span ``send <queue>`` per enqueued batch, whose W3C trace context is stored in each job's document (field
``otel``), and a consumer span ``process <queue>`` per attempt, linked to it (or its child, ``--otel_parent child``);
the lines a job logs carry ``trace_id`` and ``span_id``; the dashboard's job page links to the trace
(``--otel_trace_url``). Only the OpenTelemetry API is used: the SDK and its exporters are the application's.
"""

__version__ = "1.0.0"
