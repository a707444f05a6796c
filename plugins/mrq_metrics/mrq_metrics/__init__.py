"""mrq-metrics: Prometheus metrics of MRQ workers and queues.

Each worker process counts its jobs (by queue, task path and status), times their wait and run, and writes the
figures every ``--metrics_interval`` to a directory shared by the processes of the host (``prometheus_client``'s
multiprocess files); one of them serves ``/metrics`` on ``--metrics_port`` for all of them, with the cluster's
queue gauges computed at scrape time. The dashboard serves the cluster gauges at its own ``/metrics``.
"""

__version__ = "1.0.0"
