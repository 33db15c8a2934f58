"""Real HTTP requests to a coordinator's endpoints, and waiting on what they answer."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from coordinator.testing import CoordinatorProcess

#: Extra arguments that make `coordinator run` serve HTTP on a free port.
HTTP_ANY_PORT = ["--http", "127.0.0.1:0"]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_port(process: CoordinatorProcess, timeout: float = 30.0) -> int:
    """The port a ``coordinator run --http 127.0.0.1:0`` process bound, from its log."""
    return int(process.wait_for("http_listening", timeout)["port"])


def get(port: int, path: str, *, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def get_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, body = get(port, path)
    answer = json.loads(body)
    assert isinstance(answer, dict), body
    return status, answer


def metrics(port: int) -> Samples:
    """Every sample of /metrics, parsed by prometheus-client's own parser."""
    status, body = get(port, "/metrics")
    assert status == 200, body
    return parse_metrics(body.decode())


def parse_metrics(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def wait_status(port: int, path: str, status: int, timeout: float = 15.0) -> dict[str, Any]:
    """Poll ``path`` until it answers ``status``; its JSON body then. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            code, body = get(port, path, timeout=2.0)
            if code == status:
                answer = json.loads(body)
                assert isinstance(answer, dict)
                return answer
            last = (code, body)
        except OSError as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not answer {status} within {timeout:g} s: {last!r}")
        time.sleep(0.02)
