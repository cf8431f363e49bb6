// Ferry MQTT 5 source -> Ferry MQTT 5 sink (mode = "binary" and "structured") through the real
// Mosquitto at 127.0.0.1:1883, with MQTT.js 5.16.0 (protocolVersion 5) and the CloudEvents JS
// SDK's MQTT binding (cloudevents 10.0.0) on both ends.
//
// Publishing: MQTT.binary(event) / MQTT.structured(event) give PUBLISH["Content Type"], headers
// ("User Properties") and body ("payload"); they are mapped onto MQTT 5 as the SDK intends:
// Content Type -> properties.contentType, headers -> properties.userProperties (values as their
// strings: MQTT user properties are UTF-8 string pairs), body -> payload (objects as JSON text,
// typed arrays as their bytes, strings as UTF-8).
//
// Receiving: the message is handed to MQTT.toEvent as { PUBLISH: { "Content Type" }, headers:
// userProperties, body }, the body decoded by its Content Type (JSON parsed, text as a string,
// anything else as bytes) since MQTT.toEvent passes the body through as it is.
//
// What Ferry documents and this script expects explicitly (nothing else may differ):
// - docs/mqtt.md: in binary mode `datacontenttype` travels only as the Content Type property, not
//   as a user property, so MQTT.toEvent sees every attribute but `datacontenttype`; the Content
//   Type must carry it (JSON data without one gets application/json). User properties come in the
//   order specversion, id, source, type, then dataschema, subject, time and extensions.
// - docs/mqtt.md: on input a `datacontenttype` user property (which MQTT.binary writes) is
//   accepted when Content Type is absent and ignored when Content Type is present.
// - Structured mode: Content Type `application/cloudevents+json; charset=utf-8`.
// - Binary-mode extensions arrive as Strings; `traceparent` is added when the event has none
//   (or taken from a `traceparent` user property that is not an attribute, i.e. in structured mode).
// - An event without datacontenttype whose data came as bytes (a binary-mode message without
//   Content Type) keeps its data as bytes: data_base64 in structured mode (docs/http.md, "no
//   datacontenttype is invented for bytes"). This is what MQTT.binary sends for an event created
//   without datacontenttype. Note: the JSON format (3.1.1) says an unspecified datacontenttype
//   SHOULD be processed as application/json, which would give `data` as JSON here; the case
//   `nodct in=binary out=structured` expects Ferry's documented choice instead.
// Binary data is compared as its list of byte values, whatever typed array the SDK put it in.

import mqtt from "mqtt";
import { CloudEvent, MQTT } from "cloudevents";
import { diffViews, isTraceparent, Mailbox, runScript, sampleEvents, startFerry, uid, view } from "./harness.mjs";

const BROKER = process.env.MQTT_URL ?? "mqtt://127.0.0.1:1883";
const CORE = ["specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"];
const NON_EXT = new Set([...CORE, "data", "data_base64"]);
const NEW_TRACE = Symbol("new traceparent");
const STRUCTURED_CT = "application/cloudevents+json; charset=utf-8";

if (!/^mqtts?:\/\/127\.0\.0\.1(:\d+)?$/.test(BROKER)) throw new Error(`only 127.0.0.1 brokers: ${BROKER}`);

const isJsonType = (ct) => !!ct && /^[^;]*\/([^;]*\+)?json\s*(;|$)/i.test(ct.trim());
const isTextType = (ct) => !!ct && /^text\//i.test(ct.trim());
const isJsonData = (e) => e.data !== undefined && !ArrayBuffer.isView(e.data) && typeof e.data === "object";

function payloadOf(body) {
  if (body === undefined || body === null) return Buffer.alloc(0);
  if (typeof body === "string") return Buffer.from(body, "utf8");
  if (ArrayBuffer.isView(body)) return Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  return Buffer.from(JSON.stringify(body), "utf8");
}

/** An SDK MQTTMessage mapped onto an MQTT 5 PUBLISH. */
function toPublish(msg) {
  const properties = {};
  const ct = msg.PUBLISH["Content Type"];
  if (ct !== undefined) properties.contentType = ct;
  const userProperties = {};
  for (const [k, v] of Object.entries(msg["User Properties"])) if (v !== undefined) userProperties[k] = String(v);
  if (Object.keys(userProperties).length) properties.userProperties = userProperties;
  return { payload: payloadOf(msg.payload), properties };
}

function encode(event, mode) {
  return toPublish(mode === "binary" ? MQTT.binary(event) : MQTT.structured(event));
}

/** The received PUBLISH as an SDK MQTTMessage for MQTT.toEvent. */
function decode(arrival) {
  const ct = arrival.properties.contentType;
  const raw = arrival.payload;
  let body;
  if (ct && ct.toLowerCase().startsWith("application/cloudevents")) body = raw.toString("utf8");
  else if (isJsonType(ct)) body = JSON.parse(raw.toString("utf8"));
  else if (isTextType(ct)) body = raw.toString("utf8");
  else body = new Uint8Array(raw);
  return MQTT.toEvent({ PUBLISH: { "Content Type": ct }, headers: { ...(arrival.properties.userProperties ?? {}) }, body });
}

// --------------------------------------------------------------------------------------------
// expectations

/** The event as Ferry holds it after decoding the published message. */
function ferryView(sent, inMode, pub, inboundTrace) {
  const e = view(sent);
  if (inMode === "binary") {
    for (const k of Object.keys(e)) if (!NON_EXT.has(k)) e[k] = String(e[k]); // user properties are strings
    // datacontenttype: the Content Type property wins; the user property only without it
    const up = pub.properties.userProperties ?? {};
    const dct = pub.properties.contentType ?? up.datacontenttype;
    if (dct === undefined) delete e.datacontenttype;
    else e.datacontenttype = dct;
    if (dct === undefined && isJsonData(sent)) {
      // no media type: the payload is bytes to Ferry
      const bytes = payloadOf(sent.data);
      e.data = { bytes: Array.from(bytes) };
      e.data_base64 = bytes.toString("base64");
    }
  }
  if (e.traceparent === undefined) e.traceparent = inboundTrace ?? NEW_TRACE;
  return e;
}

function expectedOut(fe, outMode) {
  const e = { ...fe };
  let contentType = STRUCTURED_CT;
  if (outMode === "binary") {
    contentType = e.datacontenttype ?? (e.data !== undefined && !e.data_base64 && typeof e.data === "object" ? "application/json" : undefined);
    delete e.datacontenttype; // docs/mqtt.md: only as Content Type, which MQTT.toEvent does not read
    for (const k of Object.keys(e)) if (!NON_EXT.has(k) && e[k] !== NEW_TRACE) e[k] = String(e[k]);
  }
  return { e, contentType };
}

function bytesOfView(fe) {
  if (fe.data === undefined) return Buffer.alloc(0);
  if (fe.data && fe.data.bytes) return Buffer.from(fe.data.bytes);
  if (typeof fe.data === "string") return Buffer.from(fe.data, "utf8");
  return Buffer.from(JSON.stringify(fe.data), "utf8");
}

function compare(sent, inMode, outMode, pub, arrival, inboundTrace) {
  const diffs = [];
  const fe = ferryView(sent, inMode, pub, inboundTrace);
  const { e: exp, contentType } = expectedOut(fe, outMode);
  const ct = arrival.properties.contentType;
  if (ct !== contentType) diffs.push(`Content Type: expected ${JSON.stringify(contentType)} got ${JSON.stringify(ct)}`);
  let got;
  try {
    got = view(decode(arrival));
  } catch (err) {
    return [...diffs, `MQTT.toEvent threw ${err.message}`];
  }
  const want = exp.traceparent;
  if (want === NEW_TRACE) {
    if (!isTraceparent(got.traceparent)) diffs.push(`traceparent: expected a new W3C traceparent, got ${JSON.stringify(got.traceparent)}`);
    delete exp.traceparent;
    delete got.traceparent;
  }
  diffs.push(...diffViews(exp, got));
  if (outMode === "binary") {
    const up = arrival.properties.userProperties ?? {};
    const names = Object.keys(up);
    if ("datacontenttype" in up) diffs.push(`user property datacontenttype present (${up.datacontenttype}); docs/mqtt.md says Content Type only`);
    for (const [k, v] of Object.entries(up)) if (Array.isArray(v)) diffs.push(`user property ${k} repeated: ${JSON.stringify(v)}`);
    const head = names.slice(0, 4).join(",");
    if (head !== "specversion,id,source,type") diffs.push(`user property order: expected specversion,id,source,type first, got ${names.join(",")}`);
    const rank = (n) => (n === "dataschema" || n === "subject" || n === "time" ? 1 : 2);
    const rest = names.slice(4);
    for (let i = 1; i < rest.length; i++) {
      if (rank(rest[i]) < rank(rest[i - 1])) {
        diffs.push(`user property order: ${rest[i]} after extension ${rest[i - 1]} (${names.join(",")})`);
        break;
      }
    }
    const wantBytes = bytesOfView(fe);
    if (!wantBytes.equals(arrival.payload)) diffs.push(`payload bytes: expected ${wantBytes.toString("hex")} got ${arrival.payload.toString("hex")}`);
  }
  return diffs;
}

// --------------------------------------------------------------------------------------------

runScript(async (cases) => {
  const run = uid();
  const root = `ferry-interop-js/${run}`;
  const inTopic = { binary: `${root}/in/to-binary`, structured: `${root}/in/to-structured` };
  const outTopic = { binary: `${root}/out/binary`, structured: `${root}/out/structured` };
  const src = (name, topic) => `
[sources.${name}]
type = "mqtt"
url = "${BROKER}"
protocol = "5"
topics = ["${topic}"]
qos = 1
client_id = "ferry-interop-js-${name}-${run}"
clean_start = true
session_expiry_secs = 0
unrouted = "reject"
`;
  const sink = (name, topic, mode) => `
[sinks.${name}]
type = "mqtt"
url = "${BROKER}"
protocol = "5"
topic = "${topic}"
qos = 1
mode = "${mode}"
client_id = "ferry-interop-js-${name}-${run}"
timeout_ms = 5000
`;
  const config =
    src("in_to_binary", inTopic.binary) +
    src("in_to_structured", inTopic.structured) +
    sink("out_binary", outTopic.binary, "binary") +
    sink("out_structured", outTopic.structured, "structured") +
    `
[routes.to_binary]
from = ["in_to_binary"]
to = ["out_binary"]

[routes.to_structured]
from = ["in_to_structured"]
to = ["out_structured"]
`;

  // the test client: subscribe (SUBACK) before Ferry can publish anything
  const client = await mqtt.connectAsync(BROKER, {
    protocolVersion: 5,
    clientId: `ferry-interop-js-client-${run}`,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    properties: { sessionExpiryInterval: 0 },
  });
  const boxes = { binary: new Mailbox("binary-mode message"), structured: new Mailbox("structured-mode message") };
  client.on("message", (topic, payload, packet) => {
    const mode = topic === outTopic.binary ? "binary" : topic === outTopic.structured ? "structured" : null;
    if (!mode) return;
    const properties = packet.properties ?? {};
    let key = properties.userProperties?.id;
    if (mode === "structured" || key === undefined) {
      try {
        key = JSON.parse(payload.toString("utf8")).id;
      } catch {
        key = key ?? "(unparsable)";
      }
    }
    boxes[mode].put(String(key), { topic, payload: Buffer.from(payload), properties, qos: packet.qos });
  });
  try {
    const granted = await client.subscribeAsync(`${root}/out/#`, { qos: 1 });
    if (!granted.length || granted.some((g) => g.qos !== 1)) throw new Error(`subscription not granted at QoS 1: ${JSON.stringify(granted)}`);

    await startFerry(config, { name: "mqtt" });

    const modes = ["binary", "structured"];
    const jobs = [];
    const one = (caseName, ev, inMode, outMode, pub, inboundTrace) =>
      jobs.push(
        cases.run(caseName, async () => {
          await client.publishAsync(inTopic[outMode], pub.payload, { qos: 1, properties: pub.properties }); // PUBACK
          const arrival = await boxes[outMode].take(ev.id);
          const diffs = compare(ev, inMode, outMode, pub, arrival, inboundTrace);
          if (arrival.qos !== 1) diffs.push(`delivered at QoS ${arrival.qos}, expected 1`);
          return diffs;
        }),
      );
    for (const inMode of modes) {
      for (const outMode of modes) {
        for (const [name, ev] of Object.entries(sampleEvents("/interop/js-sdk/mqtt"))) {
          one(`mqtt ${name} in=${inMode} out=${outMode}`, ev, inMode, outMode, encode(ev, inMode));
        }
        // MQTT.binary without its Content Type: datacontenttype only as the user property (the
        // binding's example), which docs/mqtt.md accepts when Content Type is absent
        if (inMode === "binary") {
          const ev = sampleEvents("/interop/js-sdk/mqtt").text;
          const pub = encode(ev, "binary");
          delete pub.properties.contentType;
          one(`mqtt dct-user-property-only in=binary out=${outMode}`, ev, inMode, outMode, pub);
          // Content Type and a different datacontenttype user property: Content Type wins
          const ev2 = sampleEvents("/interop/js-sdk/mqtt").json;
          const pub2 = encode(ev2, "binary");
          pub2.properties.userProperties.datacontenttype = "text/plain";
          one(`mqtt dct-content-type-wins in=binary out=${outMode}`, ev2, inMode, outMode, pub2);
        } else {
          // a structured message with a traceparent user property (transport trace context)
          const ev = sampleEvents("/interop/js-sdk/mqtt").json;
          const pub = encode(ev, "structured");
          const trace = `00-${uid().replace(/-/g, "")}-0123456789abcdef-01`;
          pub.properties.userProperties = { traceparent: trace };
          one(`mqtt trace-user-property in=structured out=${outMode}`, ev, inMode, outMode, pub, trace);
        }
      }
    }
    await Promise.all(jobs);
    for (const mode of modes) {
      const left = boxes[mode].leftovers();
      if (left.length) cases.fail(`mqtt no unexpected deliveries (${mode})`, `unexpected: ${left.join(", ")}`);
      else cases.ok(`mqtt no unexpected deliveries (${mode})`);
    }
  } finally {
    await client.endAsync().catch(() => {});
  }
});
