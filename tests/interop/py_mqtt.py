"""paho-mqtt (MQTT 5 and 3.1.1) through Mosquitto and Ferry's MQTT source and sink: structured
events made by the `cloudevents` SDK's JSON format and MQTT 5 binary messages (attributes as
user properties, data content type as Content Type) come back identical, in both sink modes."""
import queue

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from harness import MOSQUITTO, Ferry, Report, canonical, compare_event, extensions_as_strings, sample_events, uid

report = Report("paho-mqtt")
run = uid()
TOPIC = f"ferry-interop-{run}"
CONFIG = f"""
[sources.mqtt5]
type = "mqtt"
url = "mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}"
protocol = "5"
topics = ["{TOPIC}/in5/#"]
client_id = "ferry-in5-{run}"

[sources.mqtt311]
type = "mqtt"
url = "mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}"
protocol = "3.1.1"
topics = ["{TOPIC}/in311/#"]
client_id = "ferry-in311-{run}"

[sinks.binary]
type = "mqtt"
url = "mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}"
protocol = "5"
topic = "{TOPIC}/out/binary"
mode = "binary"
client_id = "ferry-out-b-{run}"

[sinks.structured]
type = "mqtt"
url = "mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}"
protocol = "5"
topic = "{TOPIC}/out/structured"
mode = "structured"
client_id = "ferry-out-s-{run}"

[routes.all]
from = ["mqtt5", "mqtt311"]
to = ["binary", "structured"]
"""
fmt = JSONFormat()


def connect(name, protocol=mqtt.MQTTv5):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{run}", protocol=protocol)
    c.connect(*MOSQUITTO)
    c.loop_start()
    return c


received = {"binary": queue.Queue(), "structured": queue.Queue()}
subscribed = queue.Queue()
sub = connect("sub")
sub.on_message = lambda c, u, m: received[m.topic.rsplit("/", 1)[1]].put(m)
sub.on_subscribe = lambda c, u, mid, codes, props: subscribed.put(codes)
sub.subscribe(f"{TOPIC}/out/#", qos=1)
codes = subscribed.get(timeout=10)
assert all(not c.is_failure for c in codes), f"subscription refused: {codes}"


def binary_message(event):
    """MQTT 5 binary mode as the binding writes it: each attribute a user property named after
    it, `datacontenttype` as Content Type, the data as payload."""
    props = Properties(PacketTypes.PUBLISH)
    attrs = event.get_attributes()
    props.UserProperty = [(k, v) for k, v in canonical(attrs).items() if k != "datacontenttype"]
    if attrs.get("datacontenttype"):
        props.ContentType = attrs["datacontenttype"]
    return fmt.write_data(event.get_data(), attrs.get("datacontenttype")), props


def decode(mode, m):
    if mode == "structured":
        report.check("structured Content Type", "application/cloudevents+json; charset=utf-8",
                     getattr(m.properties, "ContentType", None))
        return fmt.read(None, m.payload)
    attrs = dict(getattr(m.properties, "UserProperty", []))
    content_type = getattr(m.properties, "ContentType", None)
    if content_type:
        attrs["datacontenttype"] = content_type
    from cloudevents.core.bindings.http import _decode_header_value  # the SDK's typed reading of canonical strings
    typed = {k: (_decode_header_value(k, v) if k == "time" else v) for k, v in attrs.items()}
    return CloudEvent(attributes=typed, data=fmt.read_data(m.payload, content_type))


with Ferry(CONFIG) as ferry:
    pub5 = connect("pub5")
    pub311 = connect("pub311", mqtt.MQTTv311)
    for event in sample_events(run):
        for how in ("5 structured", "5 binary", "3.1.1 structured"):
            case = f"{how} in {event.get_id()}"

            def one(event=event, how=how, case=case):
                if how == "5 binary":
                    payload, props = binary_message(event)
                    pub5.publish(f"{TOPIC}/in5/x", payload, qos=1, properties=props).wait_for_publish(10)
                    sent = CloudEvent(attributes=extensions_as_strings(event.get_attributes()), data=event.get_data())
                elif how == "5 structured":
                    props = Properties(PacketTypes.PUBLISH)
                    props.ContentType = "application/cloudevents+json; charset=utf-8"
                    pub5.publish(f"{TOPIC}/in5/x", fmt.write(event), qos=1, properties=props).wait_for_publish(10)
                    sent = event
                else:
                    pub311.publish(f"{TOPIC}/in311/x", fmt.write(event), qos=1).wait_for_publish(10)
                    sent = event
                for mode in ("binary", "structured"):
                    got = decode(mode, received[mode].get(timeout=15))
                    expected = sent
                    if mode == "binary":
                        # Binary output carries extensions as canonical strings.
                        expected = CloudEvent(attributes=extensions_as_strings(sent.get_attributes()), data=sent.get_data())
                    compare_event(report, f"{case} -> {mode}", expected, got)

            report.run(case, one)
    pub5.loop_stop()
    pub311.loop_stop()
sub.loop_stop()
report.done()
