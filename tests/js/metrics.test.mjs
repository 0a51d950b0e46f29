// metrics.test.mjs - GET /metrics as a Prometheus scraper sees it: the text parses with
// parse-prometheus-text-format, every documented family is there with its type and label
// set, and the request counters grow by exactly the requests this test sends.
// (The package folds every labelled histogram of a family into one entry, so histogram
// series are read from the bucket/sum/count lines directly.)
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { makeData, startDaemon, runTap } from "./daemon.mjs";

const BUILD = process.env.BUILD || "build";
const CACHE_BYTES = 123456789;
const data = makeData("tests/tmp/js-metrics");
const d = await startDaemon({ dataDir: data, extraArgs: ["--adapter-cache-bytes", String(CACHE_BYTES)] });

async function scrape() {
  const r = await fetch(`${d.base}/metrics`);
  assert.equal(r.status, 200);
  const text = await r.text();
  const families = new Map();
  for (const f of parsePrometheusTextFormat(text)) families.set(f.name, f);
  return { text, families, ctype: r.headers.get("content-type") };
}

// The value of the sample of family name whose labels include want (0 when absent).
function value(m, name, want = {}) {
  const f = m.families.get(name);
  assert.ok(f, `family ${name} missing`);
  const s = f.metrics.find((x) => Object.entries(want).every(([k, v]) => (x.labels || {})[k] === v));
  return s ? Number(s.value) : 0;
}

// Histogram series of family name for route: { buckets: [[le, n]...], sum, count }.
function histogram(text, name, route) {
  const out = { buckets: [], sum: 0, count: 0 };
  const lbl = `route="${route}"`;
  for (const line of text.split("\n")) {
    let m = line.match(new RegExp(`^${name}_bucket\\{${lbl.replace(/[{}/]/g, "\\$&")},le="([^"]+)"\\} (\\S+)$`));
    if (m) out.buckets.push([m[1], Number(m[2])]);
    if (line.startsWith(`${name}_sum{${lbl}} `)) out.sum = Number(line.split(" ").pop());
    if (line.startsWith(`${name}_count{${lbl}} `)) out.count = Number(line.split(" ").pop());
  }
  return out;
}

const FAMILIES = {
  adapterd_http_requests_total: "COUNTER",
  adapterd_http_request_duration_seconds: "HISTOGRAM",
  adapterd_running_sequences: "GAUGE",
  adapterd_waiting_sequences: "GAUGE",
  adapterd_kv_blocks_used: "GAUGE",
  adapterd_kv_blocks_total: "GAUGE",
  adapterd_engine_steps_total: "COUNTER",
  adapterd_engine_rows_total: "COUNTER",
  adapterd_preemptions_total: "COUNTER",
  adapterd_adapter_cache_resident_bytes: "GAUGE",
  adapterd_adapter_cache_budget_bytes: "GAUGE",
  adapterd_adapter_cache_hits_total: "COUNTER",
  adapterd_adapter_cache_misses_total: "COUNTER",
  adapterd_adapter_cache_evictions_total: "COUNTER",
  adapterd_adapter_loads_total: "COUNTER",
  adapterd_adapter_load_failures_total: "COUNTER",
  adapterd_adapter_load_seconds_total: "COUNTER",
  "vllm:lora_requests_info": "GAUGE",
  adapterd_build_info: "GAUGE",
  adapterd_start_time_seconds: "GAUGE",
  adapterd_time_to_first_token_seconds: "HISTOGRAM",
  adapterd_inter_token_seconds: "HISTOGRAM",
  adapterd_generation_seconds: "HISTOGRAM",
  adapterd_prompt_tokens_total: "COUNTER",
  adapterd_generation_tokens_total: "COUNTER",
};

const req = (method, path, body) => fetch(`${d.base}${path}`, {
  method, headers: body ? { "Content-Type": "application/json" } : {},
  body: body ? JSON.stringify(body) : undefined,
}).then(async (r) => ({ status: r.status, text: await r.text() }));

let m0, m1;
const failed = await runTap([
  ["scrape, traffic, scrape", async () => {
    m0 = await scrape();
    assert.equal((await req("GET", "/healthz")).status, 200);
    assert.equal((await req("GET", "/healthz")).status, 200);
    assert.equal((await req("GET", "/no/such/path")).status, 404);
    assert.equal((await req("DELETE", "/v1/completions")).status, 405);
    assert.equal((await req("GET", "/v1/adapters/demo-a")).status, 200);
    const c = await req("POST", "/v1/completions",
      { model: "demo-a", prompt: "Hello", max_tokens: 4, temperature: 0 });
    assert.equal(c.status, 200, c.text);
    m1 = await scrape();
  }],
  ["content type is the 0.0.4 text format", async () => {
    assert.equal(m1.ctype, "text/plain; version=0.0.4; charset=utf-8");
  }],
  ["every documented family is present with its type", async () => {
    for (const [name, type] of Object.entries(FAMILIES)) {
      const f = m1.families.get(name);
      assert.ok(f, `family ${name} missing`);
      assert.equal(f.type, type, name);
      assert.ok(f.help.length > 0, `${name} has no HELP`);
    }
  }],
  ["request counters grew by exactly the requests sent", async () => {
    const d1 = (labels) => value(m1, "adapterd_http_requests_total", labels) -
      value(m0, "adapterd_http_requests_total", labels);
    assert.equal(d1({ route: "/healthz", method: "GET", status: "200" }), 2);
    assert.equal(d1({ route: "other", method: "GET", status: "404" }), 1);
    assert.equal(d1({ route: "/v1/completions", method: "DELETE", status: "405" }), 1);
    assert.equal(d1({ route: "/v1/adapters/{spec}", method: "GET", status: "200" }), 1);
    assert.equal(d1({ route: "/v1/completions", method: "POST", status: "200" }), 1);
    assert.equal(d1({ route: "/metrics", method: "GET", status: "200" }), 1); // the first scrape
  }],
  ["request counter labels: route patterns, never raw paths", async () => {
    for (const s of m1.families.get("adapterd_http_requests_total").metrics) {
      assert.deepEqual(Object.keys(s.labels).sort(), ["method", "route", "status"]);
      assert.ok(!s.labels.route.includes("demo-a") && !s.labels.route.includes("no/such"), s.labels.route);
      assert.match(s.labels.status, /^[1-5]\d\d$/);
    }
  }],
  ["duration histogram: the route's requests, cumulative buckets", async () => {
    const h0 = histogram(m0.text, "adapterd_http_request_duration_seconds", "/v1/completions");
    const h1 = histogram(m1.text, "adapterd_http_request_duration_seconds", "/v1/completions");
    assert.equal(h1.count - h0.count, 2); // the 405 and the completion: labelled by route only
    assert.ok(h1.sum > h0.sum && h1.sum - h0.sum < 60, `sum ${h0.sum} -> ${h1.sum}`);
    assert.ok(h1.buckets.length >= 2, "no buckets");
    assert.equal(h1.buckets.at(-1)[0], "+Inf");
    assert.equal(h1.buckets.at(-1)[1], h1.count);
    for (let i = 1; i < h1.buckets.length; i++) {
      assert.ok(h1.buckets[i][1] >= h1.buckets[i - 1][1], "buckets must be cumulative");
      if (i < h1.buckets.length - 1) assert.ok(Number(h1.buckets[i][0]) > Number(h1.buckets[i - 1][0]));
    }
    const o = histogram(m1.text, "adapterd_http_request_duration_seconds", "other");
    assert.ok(o.count >= 1, "the 404 is observed under route=other");
  }],
  ["generation families: one completion of 4 tokens, its TTFT and 3 inter-token times", async () => {
    const k = { kind: "completion" };
    // The parser keeps no _count of labelled histograms: read the sample line itself.
    const count = (m, name, want) => {
      const lbl = Object.entries(want).map(([kk, v]) => `${kk}="${v}"`).join(",");
      const head = lbl ? `${name}_count{${lbl}} ` : `${name}_count `;
      const line = m.text.split("\n").find((l) => l.startsWith(head));
      return line ? Number(line.slice(head.length)) : 0;
    };
    assert.equal(count(m1, "adapterd_time_to_first_token_seconds", k) - count(m0, "adapterd_time_to_first_token_seconds", k), 1);
    assert.equal(count(m1, "adapterd_generation_seconds", k) - count(m0, "adapterd_generation_seconds", k), 1);
    assert.equal(count(m1, "adapterd_inter_token_seconds", {}) - count(m0, "adapterd_inter_token_seconds", {}), 3);
    assert.equal(value(m1, "adapterd_generation_tokens_total", k) - value(m0, "adapterd_generation_tokens_total", k), 4);
    assert.ok(value(m1, "adapterd_prompt_tokens_total", k) - value(m0, "adapterd_prompt_tokens_total", k) >= 2);
  }],
  ["engine counters moved with the completion", async () => {
    const steps = value(m1, "adapterd_engine_steps_total") - value(m0, "adapterd_engine_steps_total");
    const rows = value(m1, "adapterd_engine_rows_total") - value(m0, "adapterd_engine_rows_total");
    assert.ok(steps >= 3, `steps +${steps}`); // prompt + at least 3 more decode steps for 4 tokens
    assert.ok(rows >= steps, `rows +${rows} < steps +${steps}`);
    assert.ok(value(m1, "adapterd_kv_blocks_total") > 0);
    assert.equal(value(m1, "adapterd_running_sequences"), 0);
    assert.equal(value(m1, "adapterd_kv_blocks_used"), 0);
  }],
  ["store families: budget from the flag, the adapter was loaded", async () => {
    assert.equal(value(m1, "adapterd_adapter_cache_budget_bytes"), CACHE_BYTES);
    const used = (value(m1, "adapterd_adapter_cache_hits_total") + value(m1, "adapterd_adapter_cache_misses_total")) -
      (value(m0, "adapterd_adapter_cache_hits_total") + value(m0, "adapterd_adapter_cache_misses_total"));
    assert.equal(used, 1, "one acquire for one completion");
    assert.ok(value(m1, "adapterd_adapter_loads_total") >= 1);
    assert.ok(value(m1, "adapterd_adapter_cache_resident_bytes") > 0);
    assert.ok(value(m1, "adapterd_adapter_load_seconds_total") > 0);
  }],
  ["vllm:lora_requests_info has vLLM's labels and the scrape time", async () => {
    const f = m1.families.get("vllm:lora_requests_info");
    assert.equal(f.metrics.length, 1);
    assert.deepEqual(Object.keys(f.metrics[0].labels).sort(),
      ["max_lora", "running_lora_adapters", "waiting_lora_adapters"]);
    assert.ok(Math.abs(Number(f.metrics[0].value) - Date.now() / 1000) < 60, f.metrics[0].value);
  }],
  ["build info and start time", async () => {
    const version = execFileSync(`${BUILD}/adapterd`, ["--version"], { encoding: "utf8" }).trim().split(" ")[1];
    assert.equal(value(m1, "adapterd_build_info", { version }), 1);
    const start = value(m1, "adapterd_start_time_seconds");
    assert.ok(start <= Date.now() / 1000 && start > Date.now() / 1000 - 600, String(start));
  }],
]);
const code = await d.stop();
if (code !== 0) { console.log(`not ok - daemon exit status ${code}`); process.exit(1); }
process.exit(failed ? 1 : 0);
