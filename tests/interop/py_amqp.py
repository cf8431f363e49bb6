"""Python `cloudevents` SDK (2.x) AMQP and RabbitMQ bindings over pika: events they encode go
through Ferry's AMQP source and sink (every header prefix) and the SDK decodes them unchanged;
Spring-style messages and the AMQP 0-9-1 timestamp field type are accepted."""
import json
from datetime import datetime, timezone

import pika
from cloudevents.core.bindings import amqp, rabbitmq
from cloudevents.core.v1.event import CloudEvent

from harness import RABBITMQ, Ferry, Report, attributes, uid, without_traceparent

report = Report("python cloudevents amqp/rabbitmq")
run = uid()
IN = {p: f"ferry-interop-{run}-in-{p}" for p in ("amqp", "rabbitmq", "spring")}
OUT = {p: f"ferry-interop-{run}-out-{p}" for p in ("cloudEvents_", "ce-", "cloudEvents:", "structured")}

connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ))
channel = connection.channel()
for q in [*IN.values(), *OUT.values()]:
    channel.queue_declare(q, auto_delete=False)

sources = "".join(
    f'\n[sources.{p}]\ntype = "amqp"\nurl = "{RABBITMQ}"\nqueue = "{q}"\n' for p, q in IN.items())
SINKS = {  # sink name -> (output queue, the mode or header prefix line)
    "cloudEvents_": (OUT["cloudEvents_"], 'header_prefix = "cloudEvents_"'),
    "ce": (OUT["ce-"], 'header_prefix = "ce-"'),
    "colon": (OUT["cloudEvents:"], 'header_prefix = "cloudEvents:"'),
    "structured": (OUT["structured"], 'mode = "structured"'),
}
sinks = "".join(
    f'\n[sinks.{n}]\ntype = "amqp"\nurl = "{RABBITMQ}"\nexchange = ""\nrouting_key = "{q}"\n{line}\n'
    for n, (q, line) in SINKS.items())
CONFIG = sources + sinks + f"""
[routes.all]
from = {list(IN)}
to = {list(SINKS)}
""".replace("'", '"')

ts = datetime(2026, 12, 2, 10, 0, 0, 123000, tzinfo=timezone.utc)


def events():
    base = {"specversion": "1.0", "source": f"/interop/{run}", "type": "com.example.interop"}
    return [
        CloudEvent(attributes=dict(base, id=f"json-{run}", subject="orders/17", time=ts,
                                   datacontenttype="application/json", dataschema="https://example.com/o.json",
                                   tenant="acme", count=42, flag=True, note="grüße, 東京"),
                   data={"order": 17, "total": 42.5, "items": ["a", "ß"]}),
        CloudEvent(attributes=dict(base, id=f"text-{run}", datacontenttype="text/plain; charset=utf-8"),
                   data="plain ünïcode text"),
        CloudEvent(attributes=dict(base, id=f"bin-{run}", datacontenttype="application/octet-stream"),
                   data=bytes(range(256))),
    ]


def publish(queue, properties, headers, body):
    channel.basic_publish("", queue, body, pika.BasicProperties(
        content_type=properties.get("content-type"), headers=headers, delivery_mode=2))


def receive(queue, timeout=15):
    """The next message on `queue` as (content_type, headers, body)."""
    for method, props, body in channel.consume(queue, inactivity_timeout=timeout):
        if method is None:
            channel.cancel()
            raise TimeoutError(f"nothing arrived on {queue} within {timeout} s")
        channel.basic_ack(method.delivery_tag)
        channel.cancel()
        return props.content_type, props.headers or {}, body


def decode(out, content_type, headers, body):
    """Reads a message from Ferry's sink with the SDK binding its prefix belongs to."""
    if out == "ce-":
        return rabbitmq.from_rabbitmq_event(rabbitmq.RabbitMQMessage(
            headers=headers, content_type=content_type, body=body))
    # The SDK's amqp binding reads `cloudEvents_` and `cloudEvents:` alike.
    props = {"content-type": content_type} if content_type else {}
    return amqp.from_amqp_event(amqp.AMQPMessage(
        properties=props, application_properties=headers, application_data=body))


def check_outputs(case, expected, has_time=True):
    """Every sink delivered the event; each SDK binding reads it as `expected`. (The SDK gives a
    decoded event without `time` the current time: for such events the raw message is checked
    to have none, and `time` is left out of the comparison.)"""
    want = attributes(expected)
    for out, queue in OUT.items():
        ct, headers, body = receive(queue)
        got = decode(out, ct, headers, body)
        got_attrs = without_traceparent(attributes(got))
        exp = dict(want)
        if not has_time:
            raw = [k for k in headers if k.lower().endswith("time")]
            if out == "structured":

                raw += [k for k in json.loads(body) if k == "time"]
            report.check(f"{case} -> {out}: no time written", [], raw)
            exp.pop("time", None)
            got_attrs.pop("time", None)
        report.check(f"{case} -> {out}: attributes", exp, got_attrs)
        data = got.get_data()
        sent = expected.get_data()
        if isinstance(sent, str) and isinstance(data, (bytes, bytearray)):
            data = data.decode("utf-8")
        if isinstance(sent, dict) and isinstance(data, (bytes, bytearray)):

            data = json.loads(data)
        report.check(f"{case} -> {out}: data", sent, data)


with Ferry(CONFIG) as ferry:
    for event in events():
        # The AMQP binding (cloudEvents_ prefix, native types, time as milliseconds).
        for mode in ("binary", "structured"):
            case = f"amqp binding {mode} {event.get_id()}"

            def one(event=event, mode=mode, case=case):
                m = (amqp.to_binary_event if mode == "binary" else amqp.to_structured_event)(event)
                publish(IN["amqp"], m.properties, m.application_properties, m.application_data)
                check_outputs(case, amqp.from_amqp_event(m))

            report.run(case, one)
        # The RabbitMQ binding (ce- prefix, string values).
        for mode in ("binary", "structured"):
            case = f"rabbitmq binding {mode} {event.get_id()}"

            def one(event=event, mode=mode, case=case):
                m = (rabbitmq.to_binary_event if mode == "binary" else rabbitmq.to_structured_event)(event)
                publish(IN["rabbitmq"], {"content-type": m.content_type}, m.headers, m.body)
                check_outputs(case, rabbitmq.from_rabbitmq_event(m))

            report.run(case, one)

    # The AMQP 0-9-1 timestamp field type (`T`, whole seconds) for `time`.
    def timestamp_field():
        when = datetime(2026, 12, 2, 10, 0, 0, tzinfo=timezone.utc)
        publish(IN["amqp"], {"content-type": "application/json"}, {
            "cloudEvents_specversion": "1.0", "cloudEvents_id": f"ts-{run}",
            "cloudEvents_source": "/interop", "cloudEvents_type": "com.example.ts",
            "cloudEvents_time": when}, b'{"ok":true}')
        check_outputs("0-9-1 timestamp time", CloudEvent(attributes={
            "specversion": "1.0", "id": f"ts-{run}", "source": "/interop", "type": "com.example.ts",
            "time": when, "datacontenttype": "application/json"}, data={"ok": True}))

    report.run("0-9-1 timestamp time", timestamp_field)

    # Spring CloudEvents AMQP: the datacontenttype header equal to the content_type property.
    def spring():
        publish(IN["spring"], {"content-type": "application/json"}, {
            "cloudEvents_specversion": "1.0", "cloudEvents_id": f"spring-{run}",
            "cloudEvents_source": "/spring", "cloudEvents_type": "com.example.spring",
            "cloudEvents_datacontenttype": "application/json"}, b'{"spring":1}')
        check_outputs("spring binary", CloudEvent(attributes={
            "specversion": "1.0", "id": f"spring-{run}", "source": "/spring", "type": "com.example.spring",
            "datacontenttype": "application/json"}, data={"spring": 1}), has_time=False)

    report.run("spring binary", spring)

for q in [*IN.values(), *OUT.values()]:
    channel.queue_delete(q)
connection.close()
report.done()
