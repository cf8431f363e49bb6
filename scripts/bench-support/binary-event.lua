-- wrk script: POSTs one binary-mode CloudEvent per request (attributes in ce- headers, ~300 bytes
-- of JSON data in the body), each with its own id, and prints the figures scripts/bench reads.

local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  prefix = "wrk-" .. thread_id .. "-"
end

wrk.method = "POST"
wrk.body = '{"order":{"id":"ord-20261124-000017","customer":"cus-8812","currency":"EUR","total":142.5,'
  .. '"lines":[{"sku":"SKU-1001","name":"Espresso beans 1kg","qty":2,"price":24.5},'
  .. '{"sku":"SKU-2040","name":"Burr grinder","qty":1,"price":89.0},'
  .. '{"sku":"SKU-0007","name":"Filter papers","qty":3,"price":1.5}]},"channel":"web"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["ce-specversion"] = "1.0"
wrk.headers["ce-source"] = "https://shop.example.com/orders"
wrk.headers["ce-type"] = "com.example.order.created"
wrk.headers["ce-subject"] = "orders/ord-20261124-000017"
wrk.headers["ce-time"] = "2026-11-24T10:00:00Z"
wrk.headers["ce-tenant"] = "acme"

function request()
  counter = counter + 1
  wrk.headers["ce-id"] = prefix .. counter
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d non2xx=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
