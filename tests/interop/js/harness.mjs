// Shared helpers for the Ferry interop scripts (JS SDK / MQTT.js).
//
// Environment:
//   FERRY_BIN   path to the ferry binary (default: ../../../target/debug/ferry relative to this file)
//
// Only 127.0.0.1 is ever used. Every ferry process is started in a fresh temp dir and stopped by
// its PID (SIGTERM, then SIGKILL if it does not exit).

import { spawn } from "node:child_process";
import { CloudEvent } from "cloudevents";
import { randomUUID } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const FERRY_BIN = process.env.FERRY_BIN
  ? path.resolve(process.env.FERRY_BIN)
  : path.resolve(HERE, "../../../target/debug/ferry");

export const uid = (prefix = "") => `${prefix}${randomUUID()}`;

/** A free TCP port on 127.0.0.1, found by binding port 0. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const running = new Set();
const started = [];

function getStatus(url, timeoutMs) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", () => resolve(null));
  });
}

/**
 * Starts `ferry run` on `configText` (which must not set `[admin]`, `[reload]` or top-level keys:
 * the harness adds them) in a fresh temp dir and resolves once `/readyz` answers 200.
 * Rejects with the ferry log if it exits early or is not ready within `readyTimeoutMs`.
 */
export async function startFerry(configText, { readyTimeoutMs = 20000, name = "ferry" } = {}) {
  if (!fs.existsSync(FERRY_BIN)) throw new Error(`ferry binary not found at ${FERRY_BIN} (set FERRY_BIN)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `ferry-interop-js-${name}-`));
  const adminPort = await freePort();
  const full =
    `shutdown_timeout_ms = 5000\n\n[admin]\nlisten = "127.0.0.1:${adminPort}"\n\n` +
    `[reload]\nwatch = false\n\n[log]\nlevel = "info"\n\n${configText}`;
  const configPath = path.join(dir, "ferry.toml");
  fs.writeFileSync(configPath, full);
  const logPath = path.join(dir, "ferry.log");
  const logFd = fs.openSync(logPath, "w");
  const env = { ...process.env };
  delete env.RUST_LOG;
  const child = spawn(FERRY_BIN, ["run", "--config", configPath], {
    cwd: dir,
    stdio: ["ignore", logFd, logFd],
    env,
  });
  fs.closeSync(logFd);
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
    child.on("error", (err) => {
      exited = { code: null, signal: null, error: err };
      resolve(exited);
    });
  });
  const ferry = {
    dir,
    pid: child.pid,
    adminPort,
    configPath,
    log: () => {
      try {
        return fs.readFileSync(logPath, "utf8");
      } catch {
        return "";
      }
    },
    async stop() {
      running.delete(ferry);
      if (exited) return exited;
      try {
        process.kill(child.pid, "SIGTERM");
      } catch {
        /* already gone */
      }
      let timer;
      const t = new Promise((r) => (timer = setTimeout(() => r("timeout"), 10000)));
      const r = await Promise.race([exitPromise, t]);
      clearTimeout(timer);
      if (r === "timeout") {
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {
          /* gone */
        }
        await exitPromise;
      }
      return exited;
    },
    cleanup() {
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  running.add(ferry);
  started.push(ferry);

  const deadline = Date.now() + readyTimeoutMs;
  const readyz = `http://127.0.0.1:${adminPort}/readyz`;
  for (;;) {
    if (exited) {
      running.delete(ferry);
      throw new Error(
        `ferry exited before ready (code=${exited.code} signal=${exited.signal}${exited.error ? " " + exited.error.message : ""}); config ${configPath}\n--- ferry log ---\n${ferry.log()}`,
      );
    }
    const status = await getStatus(readyz, 1000);
    if (status === 200) return ferry;
    if (Date.now() > deadline) {
      await ferry.stop();
      throw new Error(
        `ferry not ready within ${readyTimeoutMs} ms (last /readyz: ${status}); config ${configPath}\n--- ferry log ---\n${ferry.log()}`,
      );
    }
    // /readyz has no push signal: poll it.
    await Promise.race([exitPromise, new Promise((r) => setTimeout(r, 100))]);
  }
}

/** SIGTERM every ferry this process started (by PID) and wait for them. */
export async function stopAll() {
  await Promise.all([...running].map((f) => f.stop()));
}

function killAllSync() {
  for (const f of running) {
    try {
      process.kill(f.pid, "SIGTERM");
    } catch {
      /* gone */
    }
  }
}
process.on("exit", killAllSync);

/** Case bookkeeping: prints "ok <case>" / "FAIL <case>: <diff>" and sets the exit code. */
export class Cases {
  constructor() {
    this.passed = 0;
    this.failed = 0;
  }
  ok(name) {
    this.passed++;
    console.log(`ok ${name}`);
  }
  fail(name, why) {
    this.failed++;
    console.log(`FAIL ${name}: ${why}`);
  }
  /** Runs `fn`; it returns a list of differences (empty = pass) or throws. */
  async run(name, fn) {
    try {
      const diffs = await fn();
      if (!diffs || diffs.length === 0) this.ok(name);
      else this.fail(name, diffs.join("; "));
    } catch (err) {
      this.fail(name, `error: ${err && err.stack ? err.stack.split("\n").slice(0, 3).join(" | ") : err}`);
    }
  }
}

/**
 * Runs `main(cases)` under an overall timeout; stops every ferry; exits 0 only if every case
 * passed and at least one ran.
 */
export function runScript(main, { timeoutMs = 60000 } = {}) {
  const cases = new Cases();
  const timer = setTimeout(async () => {
    cases.fail("overall", `timed out after ${timeoutMs} ms`);
    await Promise.race([stopAll(), new Promise((r) => setTimeout(r, 3000))]);
    process.exit(1);
  }, timeoutMs);
  (async () => {
    let crashed = false;
    try {
      await main(cases);
    } catch (err) {
      crashed = true;
      const lines = String(err && err.message ? err.message : err).split("\n");
      cases.fail("setup", lines[0]);
      for (const l of lines.slice(1)) console.log(`# ${l}`); // the ferry log, if any
    } finally {
      await stopAll();
    }
    clearTimeout(timer);
    const success = !crashed && cases.failed === 0 && cases.passed > 0;
    if (success) for (const f of started) f.cleanup();
    else for (const f of started) console.log(`# ferry config and log kept in ${f.dir}`);
    console.log(`${cases.passed} passed, ${cases.failed} failed`);
    process.exit(success ? 0 : 1);
  })();
}

// ---------------------------------------------------------------------------------------------
// Comparing events

/**
 * A plain, comparable view of a CloudEvent (SDK object or JSON): every own attribute whose
 * value is not undefined; binary data as `{ bytes: [..] }` whatever typed array holds it.
 */
export function view(event) {
  const out = {};
  for (const [k, v] of Object.entries(event)) {
    if (v === undefined) continue;
    out[k] = ArrayBuffer.isView(v) ? { bytes: Array.from(v) } : v;
  }
  return out;
}

const show = (v) => (v === undefined ? "(absent)" : JSON.stringify(v));

/** Differences between two views, attribute by attribute, as readable strings. */
export function diffViews(expected, got) {
  const diffs = [];
  const keys = [...new Set([...Object.keys(expected), ...Object.keys(got)])].sort();
  for (const k of keys) {
    if (!isDeepStrictEqual(expected[k], got[k])) {
      diffs.push(`${k}: expected ${show(expected[k])} got ${show(got[k])}`);
    }
  }
  return diffs;
}

/** `traceparent` as W3C trace context level 1 defines it (ids not all zero). */
export function isTraceparent(t) {
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(t ?? "");
  return !!m && !/^0+$/.test(m[1]) && !/^0+$/.test(m[2]);
}

/** A deferred-value mailbox keyed by event id: arrivals may come before or after the wait. */
export class Mailbox {
  constructor(what) {
    this.what = what;
    this.items = new Map();
    this.waiters = new Map();
    this.all = [];
  }
  put(key, item) {
    this.all.push({ key, item });
    const w = this.waiters.get(key);
    if (w) {
      this.waiters.delete(key);
      w(item);
    } else {
      if (!this.items.has(key)) this.items.set(key, []);
      this.items.get(key).push(item);
    }
  }
  take(key, timeoutMs = 10000) {
    const q = this.items.get(key);
    if (q && q.length) {
      const item = q.shift();
      if (!q.length) this.items.delete(key);
      return Promise.resolve(item);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(key);
        reject(new Error(`no ${this.what} with id ${JSON.stringify(key)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.set(key, (item) => {
        clearTimeout(timer);
        resolve(item);
      });
    });
  }
  /** Items that arrived and were never taken. */
  leftovers() {
    return [...this.items.keys()];
  }
}

// --------------------------------------------------------------------------------------------
// the events both scripts send: every attribute type, non-ASCII text, JSON, text and binary data,
// data_base64, a trace context, and an event without datacontenttype

export const TIME = "2026-11-24T10:00:00.000Z"; // what the SDK writes (toISOString), so sent === received
const NON_ASCII = "Zoë – naïve ☕ 東京 🚀";

export function sampleEvents(source) {
  const base = (name) => ({ id: uid(`${name}-`), source, type: `dev.ferry.interop.${name}`, time: TIME });
  return {
    json: new CloudEvent({
      ...base("json"),
      datacontenttype: "application/json",
      subject: NON_ASCII,
      dataschema: "https://schemas.example.com/order.json",
      tenant: "acme",
      count: 42,
      negative: -7,
      flag: true,
      off: false,
      quoted: '50% "off" sale, Zoë',
      data: { order: 17, total: 42.5, name: "Zoë ☕", tags: ["a", "b"], nested: { ok: true, none: null } },
    }),
    text: new CloudEvent({
      ...base("text"),
      datacontenttype: "text/plain; charset=utf-8",
      subject: "plain text",
      greeting: "grüße",
      data: "héllo wörld ☕\nline two\t\"quoted\"",
    }),
    bytes: new CloudEvent({
      ...base("bytes"),
      datacontenttype: "application/octet-stream",
      seq: 3,
      data: new Uint8Array([0, 1, 2, 127, 128, 200, 254, 255, 10, 13, 0]),
    }),
    base64: new CloudEvent({
      ...base("base64"),
      datacontenttype: "image/png",
      data_base64: Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0xff, 0x00]).toString("base64"),
    }),
    trace: new CloudEvent({
      ...base("trace"),
      datacontenttype: "application/json",
      traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      tracestate: "congo=t61rcWkgMzE",
      data: { traced: true },
    }),
    nodct: new CloudEvent({ ...base("nodct"), data: { implicit: "json" } }),
  };
}
