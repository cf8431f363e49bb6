"""`websockets` against Ferry's WebSocket source and push sink (subprotocol cloudevents.json):
every event sent gets its acknowledgement event naming it (a refused one too, with its id),
and a subscriber of the push sink receives each event exactly as it was sent."""
import asyncio
import json
import urllib.parse

import websockets
from cloudevents.core.formats.json import JSONFormat

from harness import Ferry, Report, compare_event, sample_events, uid

report = Report("websockets")
run = uid()
CONFIG = """
[sources.devices]
type = "websocket"
listen = "127.0.0.1:{port:devices}"
path = "/ws"

[sinks.live]
type = "websocket"
listen = "127.0.0.1:{port:live}"
path = "/live"

[routes.all]
from = ["devices"]
to = ["live"]
"""
fmt = JSONFormat()


async def main(ferry):
    live = ferry.url("live", "/live").replace("http", "ws")
    devices = ferry.url("devices", "/ws").replace("http", "ws")
    filtered = live + "?filter=" + urllib.parse.quote(json.dumps({"exact": {"type": "com.example.interop"}}))
    async with websockets.connect(live, subprotocols=["cloudevents.json"]) as sub, \
            websockets.connect(filtered, subprotocols=["cloudevents.json"]) as sub_filtered, \
            websockets.connect(devices, subprotocols=["cloudevents.json"]) as dev:
        report.check("source subprotocol", "cloudevents.json", dev.subprotocol)
        report.check("push sink subprotocol", "cloudevents.json", sub.subprotocol)
        for event in sample_events(run):
            case = event.get_id()
            await dev.send(fmt.write(event).decode())
            ack = json.loads(await asyncio.wait_for(dev.recv(), 15))
            report.check(f"{case}: ack", ("dev.ferry.ack", case, {"id": case, "status": 202}),
                         (ack["type"], ack.get("subject"), ack["data"]))
            for name, s in (("subscriber", sub), ("filtered subscriber", sub_filtered)):
                got = fmt.read(None, await asyncio.wait_for(s.recv(), 15))
                compare_event(report, f"{case} -> {name}", event, got)
        # An event the filter does not match reaches only the unfiltered subscriber: the
        # filtered one's next message is the event after it.
        other = json.loads(fmt.write(sample_events(run + "-other")[1]))
        other["type"] = "com.example.other"
        await dev.send(json.dumps(other))
        await asyncio.wait_for(dev.recv(), 15)
        report.check("unmatched event -> subscriber", other["id"], json.loads(await asyncio.wait_for(sub.recv(), 15))["id"])
        # A refused event: the error ack names it, the connection stays open.
        await dev.send(json.dumps({"specversion": "1.0", "id": f"bad-{run}", "source": "/s"}))
        ack = json.loads(await asyncio.wait_for(dev.recv(), 15))
        report.check("invalid event: error ack naming it and the attribute",
                     (f"bad-{run}", f"bad-{run}", 400, "type"),
                     (ack.get("subject"), ack["data"].get("id"), ack["data"].get("status"), ack["data"].get("attribute")))
        event = sample_events(run + "-after")[0]
        await dev.send(fmt.write(event).decode())
        ack = json.loads(await asyncio.wait_for(dev.recv(), 15))
        report.check("connection still open after an error", 202, ack["data"]["status"])
        compare_event(report, "after an error -> subscriber", event, fmt.read(None, await asyncio.wait_for(sub.recv(), 15)))
        compare_event(report, "after an unmatched one -> filtered subscriber", event,
                      fmt.read(None, await asyncio.wait_for(sub_filtered.recv(), 15)))
        # A binary frame on a cloudevents.json connection: close 1003.
        await dev.send(b"\x00\x01")
        try:
            await asyncio.wait_for(dev.recv(), 15)
            report.fail("binary frame closes 1003", "no close")
        except websockets.ConnectionClosed as closed:
            report.check("binary frame closes 1003", 1003, closed.rcvd.code if closed.rcvd else None)


with Ferry(CONFIG) as ferry:
    asyncio.run(main(ferry))
report.done()
