"""nats-py through NATS and Ferry's NATS source and sinks: structured events (the `cloudevents`
SDK's JSON format) and binary messages (`ce-` headers) published on core NATS come back identical
from a core sink in both modes and from a JetStream sink (with `Nats-Msg-Id`); a request gets
Ferry's status reply."""
import asyncio
import urllib.parse

import nats
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from harness import NATS, Ferry, Report, canonical, compare_event, extensions_as_strings, sample_events, uid

report = Report("nats-py")
run = uid()
SUBJ = f"ferryinterop{run}"
STREAM = f"FERRY_INTEROP_{run}"
CONFIG = f"""
[sources.nats]
type = "nats"
url = "{NATS}"
subject = "{SUBJ}.in.>"

[sinks.binary]
type = "nats"
url = "{NATS}"
subject = "{SUBJ}.out.binary"
mode = "binary"

[sinks.structured]
type = "nats"
url = "{NATS}"
subject = "{SUBJ}.out.structured"
mode = "structured"

[sinks.stream]
type = "nats"
url = "{NATS}"
subject = "{SUBJ}.js.{{{{type}}}}"
jetstream = true
stream = {{ name = "{STREAM}", subjects = ["{SUBJ}.js.>"] }}

[routes.all]
from = ["nats"]
to = ["binary", "structured", "stream"]
"""
fmt = JSONFormat()


def strings_for_extensions(event):
    return CloudEvent(attributes=extensions_as_strings(event.get_attributes()), data=event.get_data())


def binary_headers(event):
    """NATS binary mode: every attribute a `ce-` header, percent-encoded as the binding asks."""
    return {f"ce-{k}": urllib.parse.quote(v, safe=" !#$&'()*+,/:;=?@[]~")
            for k, v in canonical(event.get_attributes()).items()}


def decode(msg):
    headers = msg.headers or {}
    if headers.get("Content-Type", "").startswith("application/cloudevents"):
        return fmt.read(None, msg.data)
    if not any(k.lower().startswith("ce-") for k in headers):
        return fmt.read(None, msg.data)
    attrs = {k[3:].lower(): urllib.parse.unquote(v) for k, v in headers.items() if k.lower().startswith("ce-")}
    from cloudevents.core.bindings.http import _decode_header_value  # RFC 3339 `time` as the SDK reads it
    attrs = {k: (_decode_header_value(k, v) if k == "time" else v) for k, v in attrs.items()}
    return CloudEvent(attributes=attrs, data=fmt.read_data(msg.data, attrs.get("datacontenttype")))


async def main():
    nc = await nats.connect(NATS)
    js = nc.jetstream()
    subs = {m: await nc.subscribe(f"{SUBJ}.out.{m}") for m in ("binary", "structured")}
    await nc.flush()
    with Ferry(CONFIG):
        consumer = await js.pull_subscribe(f"{SUBJ}.js.>", durable=f"interop{run}", stream=STREAM)
        # Different ids for the two encodings: the stream drops a second copy by Nats-Msg-Id.
        for how in ("binary", "structured"):
            for event in sample_events(f"{run}-{how}"):
                case = f"{how} in {event.get_id()}"
                try:
                    if how == "structured":
                        await nc.publish(f"{SUBJ}.in.x", fmt.write(event))
                        sent = event
                    else:
                        await nc.publish(f"{SUBJ}.in.x", fmt.write_data(event.get_data(), event.get_datacontenttype()),
                                         headers=binary_headers(event))
                        sent = strings_for_extensions(event)
                    for mode, sub in subs.items():
                        got = decode(await sub.next_msg(timeout=15))
                        expected = strings_for_extensions(sent) if mode == "binary" else sent
                        compare_event(report, f"{case} -> core {mode}", expected, got)
                    [msg] = await consumer.fetch(1, timeout=15)
                    await msg.ack()
                    report.check(f"{case} -> jetstream: Nats-Msg-Id", f"{event.get_source()} {event.get_id()}",
                                 msg.headers.get("Nats-Msg-Id"))
                    compare_event(report, f"{case} -> jetstream", strings_for_extensions(sent), decode(msg))
                except Exception as e:
                    report.fail(case, f"{type(e).__name__}: {e}")
        # A request is answered once every sink confirmed.
        reply = await nc.request(f"{SUBJ}.in.req", fmt.write(sample_events(run + "r")[0]), timeout=15)
        report.check("request answered 202", "202", (reply.headers or {}).get("Ferry-Status"))
    await js.delete_stream(STREAM)
    await nc.close()


asyncio.run(main())
report.done()
