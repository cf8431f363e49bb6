// Ferry HTTP source -> Ferry HTTP sink, with the CloudEvents JS SDK (cloudevents 10.0.0) on
// both ends: events are encoded with HTTP.binary / HTTP.structured (and as a structured batch),
// POSTed to Ferry, delivered by Ferry's HTTP sink (mode = "binary" and mode = "structured") to a
// node http server in this script, decoded with HTTP.toEvent and compared attribute by attribute
// and byte by byte with what was sent.
//
// What Ferry documents and this script expects explicitly (nothing else may differ):
// - `traceparent`: an event without one gets a new W3C trace context (or the inbound request's
//   `traceparent` header); one that has it keeps it. The HTTP sink also sends a `traceparent`
//   header for its hop: same trace id and flags, new span id (docs/admin.md, src/trace.rs).
// - Binary-mode extensions arrive as Strings (headers carry no types) (docs/http.md).
// - Outbound ce- header values are percent-encoded (space, `"`, `%`, everything outside
//   printable ASCII, upper-case hex) and HTTP.toEvent does not decode them, so a binary-mode
//   receiver using the JS SDK sees the encoded text (docs/http.md "Header values").
// - Going to binary mode, JSON data without a datacontenttype gets Content-Type application/json.
// And of the SDK itself:
// - HTTP.binary sends `Content-Type: application/json; charset=utf-8` for an event without a
//   datacontenttype (its default), so Ferry sees that datacontenttype.
// - HTTP.binary does not percent-encode ce- header values as the HTTP binding (3.1.3.2)
//   requires, and node refuses non-Latin-1 header text; the script encodes them, as the spec
//   asks a sender to, before sending.
// - HTTP.toEvent decodes data_base64 into a Uint32Array (one element per byte): binary data is
//   compared as its list of byte values.

import http from "node:http";
import { CloudEvent, HTTP } from "cloudevents";
import { diffViews, freePort, isTraceparent, Mailbox, runScript, sampleEvents, startFerry, TIME, uid, view } from "./harness.mjs";

const CORE = new Set(["specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"]);
const NON_EXT = new Set([...CORE, "data", "data_base64"]);
const NEW_TRACE = Symbol("new traceparent");

/** Percent-encoding as Ferry documents it (and the HTTP binding 3.1.3.2 describes). */
function pctEncode(s) {
  let out = "";
  for (const b of Buffer.from(String(s), "utf8")) {
    if (b <= 0x20 || b === 0x22 || b === 0x25 || b >= 0x7f) out += "%" + b.toString(16).toUpperCase().padStart(2, "0");
    else out += String.fromCharCode(b);
  }
  return out;
}

// --------------------------------------------------------------------------------------------
// the receiver (what Ferry's HTTP sink posts to)

function startReceiver() {
  const boxes = { binary: new Mailbox("binary-mode request"), structured: new Mailbox("structured-mode request") };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const mode = req.url === "/binary" ? "binary" : req.url === "/structured" ? "structured" : null;
      const ct = req.headers["content-type"] ?? "";
      let key = req.headers["ce-id"];
      if (!key && ct.toLowerCase().startsWith("application/cloudevents")) {
        try {
          key = JSON.parse(body.toString("utf8")).id;
        } catch {
          key = "(unparsable)";
        }
      }
      res.writeHead(200, { "content-length": "0" });
      res.end();
      if (mode) boxes[mode].put(key ?? "(no id)", { method: req.method, url: req.url, headers: req.headers, body });
    });
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve({ server, port: server.address().port, boxes })),
  );
}

/** The body as a receiver built on the SDK hands it to HTTP.toEvent. */
function bodyFor(headers, raw) {
  const ct = (headers["content-type"] ?? "").toLowerCase();
  if (ct.startsWith("application/cloudevents") || /json/.test(ct) || ct.startsWith("text/")) return raw.toString("utf8");
  return raw; // bytes: the SDK passes them through (PassThroughParser / no parser)
}

// --------------------------------------------------------------------------------------------
// the sender

function post(port, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port, path: "/events", method: "POST", headers: { host: `127.0.0.1:${port}`, ...headers } },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
      },
    );
    req.setTimeout(15000, () => req.destroy(new Error("request timed out")));
    req.on("error", reject);
    req.end(body);
  });
}

/** The SDK's message for `event` in `mode`, as it goes on the wire. */
function encode(event, mode) {
  if (mode === "structured") {
    const m = HTTP.structured(event);
    return { headers: { ...m.headers }, body: Buffer.from(m.body, "utf8") };
  }
  const m = HTTP.binary(event);
  const headers = {};
  for (const [k, v] of Object.entries(m.headers)) {
    // The SDK hands over raw values (numbers and booleans too; node stringifies those); the
    // binding requires ce- values to be percent-encoded, which the SDK leaves to the transport.
    headers[k] = k.startsWith("ce-") && typeof v === "string" ? pctEncode(v) : v;
  }
  let body = m.body;
  if (typeof body === "string") body = Buffer.from(body, "utf8");
  else if (ArrayBuffer.isView(body)) body = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  else if (body === undefined) body = Buffer.alloc(0);
  return { headers, body };
}

// --------------------------------------------------------------------------------------------
// expectations

const isJsonData = (e) => e.data !== undefined && !ArrayBuffer.isView(e.data) && typeof e.data === "object";

/** What the receiver should decode, from the sent SDK event and the documented transformations. */
function expectedView(sent, inMode, outMode, inboundTraceHeader) {
  const e = view(sent);
  if (inMode === "binary") {
    if (e.datacontenttype === undefined) e.datacontenttype = "application/json; charset=utf-8"; // SDK default
    for (const k of Object.keys(e)) if (!NON_EXT.has(k)) e[k] = String(e[k]); // headers carry no types
  }
  if (e.traceparent === undefined) e.traceparent = inboundTraceHeader ?? NEW_TRACE;
  if (outMode === "binary") {
    if (e.datacontenttype === undefined && isJsonData(sent)) e.datacontenttype = "application/json";
    for (const k of Object.keys(e)) {
      if (k === "datacontenttype" || k === "data" || k === "data_base64" || e[k] === NEW_TRACE) continue;
      e[k] = pctEncode(String(e[k])); // percent-encoded ce- header, not decoded by HTTP.toEvent
    }
  }
  return e;
}

/** The exact body bytes a binary-mode delivery must carry. */
function expectedBinaryBody(sent) {
  if (sent.data === undefined) return Buffer.alloc(0);
  if (ArrayBuffer.isView(sent.data)) return Buffer.from(sent.data);
  if (typeof sent.data === "string") return Buffer.from(sent.data, "utf8");
  return Buffer.from(JSON.stringify(sent.data), "utf8"); // the SDK's JSON text, kept byte-exact
}

function checkTrace(exp, got, arrival, diffs) {
  const want = exp.traceparent;
  const have = got.traceparent;
  if (want === NEW_TRACE) {
    if (!isTraceparent(have)) diffs.push(`traceparent: expected a new W3C traceparent, got ${JSON.stringify(have)}`);
  } else if (have !== want) {
    diffs.push(`traceparent: expected ${JSON.stringify(want)} got ${JSON.stringify(have)}`);
  }
  // the hop header: same trace id and flags as the event's context, a new span id
  const hop = arrival.headers["traceparent"];
  const ctx = want === NEW_TRACE ? have : want;
  if (!isTraceparent(hop)) diffs.push(`traceparent header: expected one, got ${JSON.stringify(hop)}`);
  else if (isTraceparent(ctx)) {
    const [, t1, s1, f1] = ctx.split("-");
    const [, t2, s2, f2] = hop.split("-");
    if (t1 !== t2 || f1 !== f2) diffs.push(`traceparent header ${hop}: not the trace of ${ctx}`);
    if (s1 === s2) diffs.push(`traceparent header ${hop}: same span id as the event's ${ctx}`);
  }
  delete exp.traceparent;
  delete got.traceparent;
}

function compareArrival(sent, inMode, outMode, arrival, traceHeader) {
  const diffs = [];
  const ct = arrival.headers["content-type"];
  let decoded;
  try {
    decoded = HTTP.toEvent({ headers: arrival.headers, body: bodyFor(arrival.headers, arrival.body) });
  } catch (err) {
    return [`HTTP.toEvent threw ${err.message} (content-type ${ct}, body ${arrival.body.toString("utf8").slice(0, 200)})`];
  }
  if (Array.isArray(decoded)) return [`expected one event, HTTP.toEvent gave a batch of ${decoded.length}`];
  const exp = expectedView(sent, inMode, outMode, traceHeader);
  const got = view(decoded);
  checkTrace(exp, got, arrival, diffs);
  diffs.push(...diffViews(exp, got));
  if (outMode === "binary") {
    const want = expectedBinaryBody(sent);
    if (!want.equals(arrival.body)) diffs.push(`body bytes: expected ${want.toString("hex")} got ${arrival.body.toString("hex")}`);
    const wantCt = exp.datacontenttype;
    if (ct !== wantCt) diffs.push(`content-type: expected ${JSON.stringify(wantCt)} got ${JSON.stringify(ct)}`);
  } else if (!(ct ?? "").toLowerCase().startsWith("application/cloudevents+json")) {
    diffs.push(`content-type: expected application/cloudevents+json…, got ${JSON.stringify(ct)}`);
  }
  return diffs;
}

// --------------------------------------------------------------------------------------------

runScript(async (cases) => {
  const receiver = await startReceiver();
  try {
    const srcPort = { binary: await freePort(), structured: await freePort() };
    const config = `
[sources.in_binary_out]
type = "http"
listen = "127.0.0.1:${srcPort.binary}"
path = "/events"
unrouted = "reject"
ack_timeout_ms = 10000

[sources.in_structured_out]
type = "http"
listen = "127.0.0.1:${srcPort.structured}"
path = "/events"
unrouted = "reject"
ack_timeout_ms = 10000

[sinks.out_binary]
type = "http"
url = "http://127.0.0.1:${receiver.port}/binary"
mode = "binary"
timeout_ms = 5000

[sinks.out_structured]
type = "http"
url = "http://127.0.0.1:${receiver.port}/structured"
mode = "structured"
timeout_ms = 5000

[routes.to_binary]
from = ["in_binary_out"]
to = ["out_binary"]

[routes.to_structured]
from = ["in_structured_out"]
to = ["out_structured"]
`;
    await startFerry(config, { name: "http" });

    const modes = ["binary", "structured"];
    const jobs = [];
    for (const inMode of modes) {
      for (const outMode of modes) {
        const evs = sampleEvents("/interop/js-sdk");
        // an event without its own trace context, sent with a traceparent request header
        evs.traceheader = new CloudEvent({ id: uid("traceheader-"), source: "/interop/js-sdk", type: "dev.ferry.interop.traceheader", time: TIME, datacontenttype: "text/plain", data: "hop" });
        for (const [name, ev] of Object.entries(evs)) {
          const caseName = `http ${name} in=${inMode} out=${outMode}`;
          jobs.push(
            cases.run(caseName, async () => {
              const msg = encode(ev, inMode);
              let traceHeader;
              if (name === "traceheader") {
                traceHeader = `00-${uid().replace(/-/g, "")}-${"a1b2c3d4e5f60718"}-01`;
                msg.headers.traceparent = traceHeader;
              }
              const res = await post(srcPort[outMode], msg.headers, msg.body);
              if (res.status !== 202) return [`source answered ${res.status} ${res.body}`];
              const arrival = await receiver.boxes[outMode].take(ev.id);
              return compareArrival(ev, inMode, outMode, arrival, traceHeader);
            }),
          );
        }
      }
    }
    await Promise.all(jobs);

    // ---- batches (docs/http.md: application/cloudevents-batch+json, all or nothing)
    for (const outMode of modes) {
      await cases.run(`http batch of 4 out=${outMode}`, async () => {
        const evs = sampleEvents("/interop/js-sdk");
        const batch = [evs.json, evs.text, evs.bytes, evs.nodct];
        const body = JSON.stringify(batch.map((e) => JSON.parse(HTTP.structured(e).body)));
        // sanity: the SDK reads our batch back as these events
        const parsed = HTTP.toEvent({ headers: { "content-type": "application/cloudevents-batch+json" }, body });
        if (!Array.isArray(parsed) || parsed.length !== batch.length) return [`SDK could not read the batch back`];
        const res = await post(srcPort[outMode], { "content-type": "application/cloudevents-batch+json" }, Buffer.from(body, "utf8"));
        if (res.status !== 202) return [`source answered ${res.status} ${res.body}`];
        const diffs = [];
        for (const ev of batch) {
          const arrival = await receiver.boxes[outMode].take(ev.id);
          for (const d of compareArrival(ev, "structured", outMode, arrival, undefined)) diffs.push(`[${ev.type}] ${d}`);
        }
        return diffs;
      });
    }

    await cases.run("http empty batch -> 202", async () => {
      const res = await post(srcPort.structured, { "content-type": "application/cloudevents-batch+json" }, Buffer.from("[]"));
      return res.status === 202 ? [] : [`expected 202, got ${res.status} ${res.body}`];
    });

    await cases.run("http batch with an invalid event -> 400, nothing delivered", async () => {
      const good = sampleEvents("/interop/js-sdk").json;
      const bad = { specversion: "1.0", id: uid("bad-"), source: "/interop/js-sdk" }; // no type
      const body = JSON.stringify([JSON.parse(HTTP.structured(good).body), bad]);
      const res = await post(srcPort.structured, { "content-type": "application/cloudevents-batch+json" }, Buffer.from(body, "utf8"));
      const diffs = [];
      if (res.status !== 400) diffs.push(`status: expected 400 got ${res.status}`);
      if (!(res.headers["content-type"] ?? "").startsWith("application/problem+json")) diffs.push(`content-type: expected application/problem+json got ${res.headers["content-type"]}`);
      let problem = {};
      try {
        problem = JSON.parse(res.body);
      } catch {
        diffs.push(`problem body not JSON: ${res.body}`);
      }
      if (problem.index !== 1) diffs.push(`problem.index: expected 1 got ${JSON.stringify(problem.index)}`);
      if (problem.attribute !== "type") diffs.push(`problem.attribute: expected "type" got ${JSON.stringify(problem.attribute)}`);
      // a marker event after the refused batch: once it arrived, the batch's good event must not have
      const marker = sampleEvents("/interop/js-sdk").text;
      const m = encode(marker, "structured");
      const r2 = await post(srcPort.structured, m.headers, m.body);
      if (r2.status !== 202) diffs.push(`marker: source answered ${r2.status}`);
      else await receiver.boxes.structured.take(marker.id);
      if (receiver.boxes.structured.all.some((a) => a.key === good.id)) diffs.push(`the valid event of the refused batch was delivered`);
      return diffs;
    });

    for (const mode of modes) {
      const left = receiver.boxes[mode].leftovers();
      if (left.length) cases.fail(`http no unexpected deliveries (${mode})`, `unexpected: ${left.join(", ")}`);
      else cases.ok(`http no unexpected deliveries (${mode})`);
    }
  } finally {
    receiver.server.closeAllConnections?.();
    receiver.server.close();
  }
});
