"""paho-mqtt (MQTT 5 and 3.1.1, over TCP and over WebSocket), mosquitto_pub and mosquitto_sub as
devices of Ferry's own MQTT server (`type = "mqtt-server"`): events made by the `cloudevents` SDK
arrive identical (with the principal Ferry stamps), the PUBACK reason codes say what happened,
CONNACK refuses a wrong password, and commands (the `mqtt-server` sink) reach subscribed devices,
the HTTP request answered once the device PUBACKed."""
import json
import os
import queue
import subprocess
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from cloudevents.core.formats.json import JSONFormat

from harness import Ferry, Report, canonical, compare_event, extensions_as_strings, post, sample_events, uid

report = Report("paho-mqtt and mosquitto_pub against the MQTT server")
run = uid()
CONFIG = """
[sources.devices]
type = "mqtt-server"
listen = "127.0.0.1:{port:mqtt}"
websocket = { listen = "127.0.0.1:{port:ws}", path = "/mqtt" }
topics = ["devices/+/telemetry", "devices/+/events"]
acl = { publish = ["devices/{client_id}/#"], subscribe = ["commands/{client_id}/#"] }

[sources.devices.auth]
passwords = { "dev-a" = "pw-a", "dev-b" = "pw-b" }

[sources.api]
type = "http"
listen = "127.0.0.1:{port:api}"
path = "/commands"

[sinks.archive]
type = "file"
path = "{dir}/events.jsonl"

[sinks.commands]
type = "mqtt-server"
server = "devices"
topic = "commands/{subject}"
qos = 1
mode = "structured"

[routes.all]
from = ["devices"]
to = ["archive"]

[routes.commands]
from = ["api"]
to = ["commands"]
"""
fmt = JSONFormat()


def archived(ferry, event_id, timeout=15):
    """The archived event with this id, decoded by the SDK, once the file sink wrote it."""
    path = os.path.join(ferry.dir, "events.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, "rb") as f:
                for line in f:
                    if line.endswith(b"\n") and json.loads(line).get("id") == event_id:
                        return fmt.read(None, line)
        time.sleep(0.05)
    raise AssertionError(f"event {event_id} was not archived")


def without_auth(event, user):
    """The archived event minus the principal Ferry stamped (checked here)."""
    attrs = event.get_attributes()
    assert attrs.get("authtype") == "user", attrs
    assert attrs.get("authid") == user, attrs
    from cloudevents.core.v1.event import CloudEvent
    rest = {k: v for k, v in attrs.items() if k not in ("authtype", "authid")}
    return CloudEvent(attributes=rest, data=event.get_data())


def device(ferry, client_id, password, protocol=mqtt.MQTTv5, transport="tcp"):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                    transport=transport)
    c.username_pw_set(client_id, password)
    connacks = queue.Queue()
    acks = {}
    c.on_connect = lambda cl, u, flags, rc, props: connacks.put(rc)
    c.on_publish = lambda cl, u, mid, rc, props: acks.setdefault(mid, queue.Queue()).put(rc)
    port = ferry.ports["ws" if transport == "websockets" else "mqtt"]
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    c.connect("127.0.0.1", port)
    c.loop_start()
    rc = connacks.get(timeout=10)

    def publish(topic, payload, properties=None):
        info = c.publish(topic, payload, qos=1, properties=properties)
        deadline = time.monotonic() + 10
        while info.mid not in acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return acks[info.mid].get(timeout=10)

    c.publish_acked = publish
    return c, rc


def binary_properties(event):
    props = Properties(PacketTypes.PUBLISH)
    attrs = event.get_attributes()
    props.UserProperty = [(k, v) for k, v in canonical(attrs).items() if k != "datacontenttype"]
    if attrs.get("datacontenttype"):
        props.ContentType = attrs["datacontenttype"]
    return props


with Ferry(CONFIG) as ferry:
    a5, rc = device(ferry, "dev-a", "pw-a")
    report.check("MQTT 5 CONNACK", 0, rc.value)
    a311, rc = device(ferry, "dev-b", "pw-b", mqtt.MQTTv311)
    report.check("3.1.1 CONNACK", 0, rc.value)
    for event in sample_events(run):
        eid = event.get_id()

        def structured5(event=event, eid=eid):
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/cloudevents+json; charset=utf-8"
            e = event.__class__(attributes=dict(event.get_attributes(), id=f"s5-{eid}"), data=event.get_data())
            rc = a5.publish_acked("devices/dev-a/telemetry", fmt.write(e), props)
            report.check(f"5 structured {eid}: PUBACK", 0, rc.value)
            compare_event(report, f"5 structured {eid}", e, without_auth(archived(ferry, f"s5-{eid}"), "dev-a"))

        def binary5(event=event, eid=eid):
            e = event.__class__(attributes=dict(event.get_attributes(), id=f"b5-{eid}"), data=event.get_data())
            payload = fmt.write_data(e.get_data(), e.get_attributes().get("datacontenttype"))
            rc = a5.publish_acked("devices/dev-a/telemetry", payload, binary_properties(e))
            report.check(f"5 binary {eid}: PUBACK", 0, rc.value)
            expected = e.__class__(attributes=extensions_as_strings(e.get_attributes()), data=e.get_data())
            compare_event(report, f"5 binary {eid}", expected, without_auth(archived(ferry, f"b5-{eid}"), "dev-a"))

        def structured311(event=event, eid=eid):
            e = event.__class__(attributes=dict(event.get_attributes(), id=f"s3-{eid}"), data=event.get_data())
            rc = a311.publish_acked("devices/dev-b/events", fmt.write(e))
            report.check(f"3.1.1 {eid}: PUBACK", 0, rc.value)
            compare_event(report, f"3.1.1 {eid}", e, without_auth(archived(ferry, f"s3-{eid}"), "dev-b"))

        report.run(f"5 structured {eid}", structured5)
        report.run(f"5 binary {eid}", binary5)
        report.run(f"3.1.1 {eid}", structured311)

    def acl_breach():
        e = sample_events(run)[1]
        rc = a5.publish_acked("devices/dev-b/telemetry", fmt.write(e))
        report.check("ACL breach: PUBACK reason code", 0x87, rc.value)

    report.run("ACL breach", acl_breach)

    def websocket():
        ws, rc = device(ferry, "dev-a", "pw-a", transport="websockets")
        report.check("WebSocket CONNACK", 0, rc.value)
        e = sample_events(run)[0]
        e = e.__class__(attributes=dict(e.get_attributes(), id=f"ws-{run}"), data=e.get_data())
        rc = ws.publish_acked("devices/dev-a/telemetry", fmt.write(e))
        report.check("WebSocket PUBACK", 0, rc.value)
        compare_event(report, "WebSocket", e, without_auth(archived(ferry, f"ws-{run}"), "dev-a"))
        ws.loop_stop()

    report.run("MQTT over WebSocket", websocket)

    def wrong_password():
        _, rc = device(ferry, "dev-a", "nope")
        report.check("MQTT 5 wrong password: CONNACK", 0x86, rc.value)

    report.run("wrong password", wrong_password)

    def mosquitto_pub():
        # mosquitto_pub connects as dev-b: the paho session of that client id goes first, so
        # the two do not take the session from each other.
        a311.disconnect()
        a311.loop_stop()
        for version in ("mqttv311", "mqttv5"):
            e = sample_events(run)[0]
            e = e.__class__(attributes=dict(e.get_attributes(), id=f"mp-{version}-{run}"), data=e.get_data())
            subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(ferry.ports["mqtt"]), "-V", version,
                 "-q", "1", "-i", "dev-b", "-u", "dev-b", "-P", "pw-b", "-t", "devices/dev-b/events",
                 "-m", fmt.write(e).decode("utf-8")],
                check=True, timeout=20)
            compare_event(report, f"mosquitto_pub {version}", e,
                          without_auth(archived(ferry, f"mp-{version}-{run}"), "dev-b"))

    report.run("mosquitto_pub", mosquitto_pub)
    def commands():
        # The subscriber connects as dev-a: the publishing session of that client id goes
        # first, so the two do not take the session from each other.
        a5.disconnect()
        a5.loop_stop()
        received = queue.Queue()
        sub, rc = device(ferry, "dev-a", "pw-a")
        subscribed = queue.Queue()
        sub.on_subscribe = lambda c, u, mid, codes, props: subscribed.put(codes)
        sub.on_message = lambda c, u, m: received.put(m)
        sub.subscribe("commands/dev-a/#", qos=1)
        codes = subscribed.get(timeout=10)
        report.check("SUBACK", [1], [c.value for c in codes])
        e = sample_events(run)[0]
        e = e.__class__(attributes=dict(e.get_attributes(), id=f"cmd-{run}", subject="dev-a"), data=e.get_data())
        status, _, _ = post(ferry.url("api", "/commands"),
                            {"content-type": "application/cloudevents+json"}, fmt.write(e))
        report.check("command POST answered after the device's PUBACK", 202, status)
        m = received.get(timeout=10)
        report.check("command topic", "commands/dev-a", m.topic)
        compare_event(report, "command", e, fmt.read(None, m.payload))
        sub.loop_stop()
        # mosquitto_sub (3.1.1) as another device gets the next one.
        proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(ferry.ports["mqtt"]), "-V", "mqttv311",
             "-q", "1", "-i", "dev-b", "-u", "dev-b", "-P", "pw-b", "-t", "commands/dev-b/#", "-C", "1"],
            stdout=subprocess.PIPE)
        # A command is confirmed at once while no session subscribes: post until one is delivered.
        deadline = time.monotonic() + 10
        e = e.__class__(attributes=dict(e.get_attributes(), id=f"cmd-b-{run}", subject="dev-b"), data=e.get_data())
        while proc.poll() is None and time.monotonic() < deadline:
            post(ferry.url("api", "/commands"), {"content-type": "application/cloudevents+json"}, fmt.write(e))
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        out = proc.communicate(timeout=10)[0]
        compare_event(report, "command to mosquitto_sub", e, fmt.read(None, out.strip()))

    report.run("commands", commands)
    a5.loop_stop()
    a311.loop_stop()
report.done()
