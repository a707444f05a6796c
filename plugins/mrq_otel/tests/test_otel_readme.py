"""The README's code block runs as written: its ``mrq-config.py`` in a real worker exports the job's spans over
OTLP/HTTP to the endpoint of ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a local server here), and sets the plugin's options."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mrq.config import get_config
from mrq.job import queue_job
from otel_helpers import ENV, T

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", README.read_text(), re.S)


def test_every_code_block_is_run_by_this_file():
    assert [lang for lang, _ in blocks()] == ["python"]


def test_the_config_file_as_written(tmp_path, monkeypatch):
    (tmp_path / "mrq-config.py").write_text(blocks()[0][1])
    monkeypatch.chdir(tmp_path)
    config = get_config("dashboard", argv=[], env={})
    assert "otel" in config["plugins"] and config["otel_parent"] == "link"
    assert config["otel_trace_url"] == "http://jaeger:16686/trace/{trace_id}"


def test_a_worker_with_the_config_exports_over_otlp(mrq_config, mrq_worker, tmp_path):
    received: list[bytes] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(self.path.encode() + b" " + self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "mrq-config.py"
    config.write_text(blocks()[0][1])
    try:
        mrq_worker.start("--config", str(config), env={
            **ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
            "OTEL_SERVICE_NAME": "mrq-readme-worker"})
        job_id = queue_job(T + "Child", {"n": 3})
        mrq_worker.wait_for_idle()
        assert mrq_worker.stop() == 0          # its last spans are flushed at stop
    finally:
        server.shutdown()
    body = b"".join(received)
    assert body.startswith(b"/v1/traces ")
    assert b"process default" in body and str(job_id).encode() in body and b"mrq-readme-worker" in body
