"""Shared helpers for Ferry's interop scripts: start a gateway, compare events, report cases.

Every script starts its own `ferry run` on a config it writes (loopback addresses and free ports
only, unique names per run), drives a third-party client against it and compares what comes out
with what went in, attribute by attribute and byte by byte. It prints `ok <case>` or
`FAIL <case>: <why>` per case and exits 1 if any case failed.

Environment: FERRY_BIN, the ferry binary (default: target/debug/ferry from the repo root).
"""
import http.server
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FERRY_BIN = os.environ.get("FERRY_BIN", os.path.join(ROOT, "target", "debug", "ferry"))
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/%2f"
MOSQUITTO = ("127.0.0.1", 1883)
NATS = "nats://127.0.0.1:4222"


def uid():
    """A name no other run uses: topics, queues, subjects, client ids."""
    return uuid.uuid4().hex[:12]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ferry:
    """A `ferry run` process on a config text; `{port:<name>}` placeholders get free ports."""

    def __init__(self, config, ready_timeout=30.0):
        self.dir = tempfile.mkdtemp(prefix="ferry-interop-")
        self.ports = {}

        def port(name):
            if name not in self.ports:
                self.ports[name] = free_port()
            return self.ports[name]

        admin = port("admin")
        text = f'[admin]\nlisten = "127.0.0.1:{admin}"\n\n' + config
        while "{port:" in text:
            start = text.index("{port:")
            end = text.index("}", start)
            text = text[:start] + str(port(text[start + 6 : end])) + text[end + 1 :]
        text = text.replace("{dir}", self.dir)
        self.config_path = os.path.join(self.dir, "ferry.toml")
        with open(self.config_path, "w") as f:
            f.write(text)
        self.log_path = os.path.join(self.dir, "ferry.log")
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, RUST_LOG=os.environ.get("FERRY_INTEROP_LOG", "warn"))
        self.proc = subprocess.Popen(
            [FERRY_BIN, "run", "--config", self.config_path],
            cwd=self.dir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ferry not ready within {ready_timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def url(self, name, path=""):
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Capture:
    """An HTTP server that records every request (method, path, headers, body) and answers 200."""

    def __init__(self):
        self.requests = queue.Queue()
        captured = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                captured.put((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout=15):
        return self.requests.get(timeout=timeout)

    def close(self):
        self.server.shutdown()


class Report:
    """Collects cases; `done()` prints the summary and exits 1 if any failed."""

    def __init__(self, name):
        self.name = name
        self.failed = 0
        self.passed = 0

    def check(self, case, expected, got):
        if expected == got:
            self.passed += 1
            print(f"ok {case}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {case}:\n  expected {expected!r}\n  got      {got!r}", flush=True)

    def fail(self, case, why):
        self.failed += 1
        print(f"FAIL {case}: {why}", flush=True)

    def run(self, case, fn):
        """Runs one case; an exception fails it with its message."""
        try:
            fn()
        except Exception as e:  # a case's error is its failure, reported with the rest
            import traceback
            self.fail(case, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")

    def done(self):
        print(f"{self.name}: {self.passed} passed, {self.failed} failed", flush=True)
        sys.exit(1 if self.failed or not self.passed else 0)


def attributes(event):
    """The attributes of a cloudevents 2.x event as a plain dict (None values left out)."""
    return {k: v for k, v in event.get_attributes().items() if v is not None}


def without_traceparent(attrs):
    """Ferry adds W3C `traceparent` (distributed tracing extension) to events that have none: the
    comparison takes it out after checking its form."""
    attrs = dict(attrs)
    tp = attrs.pop("traceparent", None)
    if tp is not None:
        parts = tp.split("-")
        assert len(parts) == 4 and parts[0] == "00" and len(parts[1]) == 32, f"traceparent {tp!r}"
    return attrs


def post(url, headers, body, timeout=15):
    """POSTs exactly these headers and body (no default content type) and returns
    (status, headers, body)."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("POST", u.path or "/", body=body, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def sample_events(run):
    """The events every broker script sends: JSON data with typed extensions and non-ASCII
    text, text data, bytes."""
    from datetime import datetime, timezone

    from cloudevents.core.v1.event import CloudEvent

    base = {"specversion": "1.0", "source": f"/interop/{run}", "type": "com.example.interop"}
    return [
        CloudEvent(attributes=dict(base, id=f"json-{run}", subject="orders/17",
                                   time=datetime(2026, 12, 2, 10, 0, 0, 123456, tzinfo=timezone.utc),
                                   datacontenttype="application/json", dataschema="https://example.com/o.json",
                                   tenant="acme", count=42, flag=True, note="grüße, 東京 / 100%"),
                   data={"order": 17, "total": 42.5, "items": ["a", "ß"], "none": None}),
        CloudEvent(attributes=dict(base, id=f"text-{run}", datacontenttype="text/plain; charset=utf-8"),
                   data="plain ünïcode text\nsecond line"),
        CloudEvent(attributes=dict(base, id=f"bin-{run}", datacontenttype="application/octet-stream"),
                   data=bytes(range(256))),
    ]


def canonical(attrs):
    """Attributes as a string-only binding carries them: canonical strings (booleans `true` /
    `false`, integers in decimal, timestamps in RFC 3339)."""
    from datetime import datetime

    def text(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, datetime):
            return v.isoformat().replace("+00:00", "Z")
        return v
    return {k: text(v) for k, v in attrs.items()}


CORE_ATTRIBUTES = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype",
                   "dataschema"}


def extensions_as_strings(attrs):
    """What a binding that carries extensions in text headers delivers: every extension as its
    canonical string, core attributes as they are."""
    strings = canonical(attrs)
    return {k: (v if k in CORE_ATTRIBUTES else strings[k]) for k, v in attrs.items()}


def compare_event(report, case, sent, got):
    """Exact comparison of a decoded event with the sent one: every attribute (Ferry's added
    `traceparent` aside) and the data."""
    report.check(f"{case}: attributes", attributes(sent), without_traceparent(attributes(got)))
    data, expected = got.get_data(), sent.get_data()
    if isinstance(expected, str) and isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8")
    report.check(f"{case}: data", expected, data)
