"""Python `cloudevents` SDK (2.x) over HTTP: binary, structured and batched events sent to Ferry's
HTTP source come out of its HTTP sink (binary and structured mode) identical, as the SDK reads them."""
from datetime import datetime, timezone

from cloudevents.core.bindings import http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from harness import Capture, Ferry, Report, attributes, extensions_as_strings, post, uid, without_traceparent

report = Report("python cloudevents http")
capture = Capture()
run = uid()
CONFIG = f"""
[sources.to_binary]
type = "http"
listen = "127.0.0.1:{{port:to_binary}}"
path = "/events"

[sources.to_structured]
type = "http"
listen = "127.0.0.1:{{port:to_structured}}"
path = "/events"

[sinks.binary]
type = "http"
url = "http://127.0.0.1:{capture.port}/binary"
mode = "binary"

[sinks.structured]
type = "http"
url = "http://127.0.0.1:{capture.port}/structured"
mode = "structured"

[routes.binary]
from = ["to_binary"]
to = ["binary"]

[routes.structured]
from = ["to_structured"]
to = ["structured"]
"""


def events():
    """Events that exercise every attribute type and the kinds of data."""
    base = {"specversion": "1.0", "source": f"/interop/{run}", "type": "com.example.interop"}
    return {
        "json data, every attribute": CloudEvent(
            attributes=dict(base, id=f"json-{run}", subject="orders/17", time=datetime(2026, 12, 2, 10, 0, 0, 123456, tzinfo=timezone.utc),
                            datacontenttype="application/json", dataschema="https://example.com/order.json",
                            tenant="acme", count=42, flag=True, note="grüße, 東京 / 100% done"),
            data={"order": 17, "items": ["a", "ß"], "total": 42.5, "nested": {"ok": None}}),
        "text data": CloudEvent(
            attributes=dict(base, id=f"text-{run}", datacontenttype="text/plain; charset=utf-8"),
            data="plain text, with ünïcode\nand a second line"),
        "binary data": CloudEvent(
            attributes=dict(base, id=f"bin-{run}", datacontenttype="application/octet-stream"),
            data=bytes(range(256))),
        "no data": CloudEvent(attributes=dict(base, id=f"empty-{run}")),
        "xml data": CloudEvent(
            attributes=dict(base, id=f"xml-{run}", datacontenttype="application/xml"),
            data='<order id="17"><total>42.5</total></order>'),
    }


def same_event(case, sent, got, encode="structured", sink="structured"):
    # Binary mode carries extensions as strings: what the SDK reads back from its own binary
    # message, without Ferry in between, is what Ferry must deliver.
    if encode == "binary":
        sent = http.from_http_event(http.to_binary_event(sent))
    expected = attributes(sent)
    if sink == "binary":
        expected = extensions_as_strings(expected)
    report.check(f"{case}: attributes", expected, without_traceparent(attributes(got)))
    expected = sent.get_data()
    data = got.get_data()
    if isinstance(expected, str) and isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8")
    report.check(f"{case}: data", expected, data)


def take(path):
    got_path, headers, body = capture.next()
    assert got_path == path, f"the sink posted to {got_path}, not {path}"
    return http.from_http_event(http.HTTPMessage(headers=headers, body=body))


with Ferry(CONFIG) as ferry:
    for sink in ("binary", "structured"):
        url = ferry.url(f"to_{sink}", "/events")
        for encode in ("binary", "structured"):
            for name, event in events().items():
                case = f"{encode} in, {sink} out, {name}"

                def one(event=event, case=case, encode=encode, sink=sink):
                    m = (http.to_binary_event if encode == "binary" else http.to_structured_event)(event)
                    status, _, body = post(url, m.headers, m.body)
                    assert status == 202, f"Ferry answered {status}: {body!r}"
                    same_event(case, event, take(f"/{sink}"), encode, sink)

                report.run(case, one)

        # A batch: the SDK writes each event; the batch format is their JSON array.
        def batch(url=url, sink=sink):
            sent = list(events().values())
            fmt = JSONFormat()
            body = b"[" + b",".join(fmt.write(e) for e in sent) + b"]"
            status, _, answer = post(url, {"content-type": "application/cloudevents-batch+json"}, body)
            assert status == 202, f"Ferry answered {status}: {answer!r}"
            got = {}
            for _ in sent:
                e = take(f"/{sink}")
                got[e.get_id()] = e
            for e in sent:
                same_event(f"batch in, {sink} out, {e.get_id()}", e, got[e.get_id()], sink=sink)

        report.run(f"batch in, {sink} out", batch)

capture.close()
report.done()
