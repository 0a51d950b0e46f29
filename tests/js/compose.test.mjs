// compose.test.mjs - adapter selection over HTTP: every wire form (model = adapter,
// adapter_id, adapters + combination, llama.cpp's lora and GET /lora-adapters) maps onto
// the same adapter sets, so equal sets give equal greedy text; compositions with negative
// weights, "linear" mode, streaming; and every error is the OpenAI error shape.
// Default data: demo-a (rank 8, q/v), demo-b (rank 4, all seven, rsLoRA).
import assert from "node:assert/strict";
import OpenAI from "openai";
import { makeData, startDaemon, runTap } from "./daemon.mjs";

const data = makeData("tests/tmp/js-compose");
const d = await startDaemon({ dataDir: data });
const BASE = "tiny-llama";
const gen = { prompt: "Once upon a time", max_tokens: 12, temperature: 0, ignore_eos: true };

async function post(path, body) {
  const r = await fetch(`${d.base}${path}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* SSE */ }
  return { status: r.status, headers: r.headers, text, json };
}

// The greedy text of a selection (fields merged into a base request).
async function textOf(fields) {
  const r = await post("/v1/completions", { model: BASE, ...gen, ...fields });
  assert.equal(r.status, 200, `${JSON.stringify(fields)}: ${r.text}`);
  return r.json.choices[0].text;
}

function assertError(res, status, code, re) {
  assert.equal(res.status, status, res.text);
  assert.ok(res.json && typeof res.json.error === "object", res.text);
  const e = res.json.error;
  assert.equal(typeof e.message, "string", res.text);
  assert.equal(e.type, status >= 500 || status === 429 ? "server_error" : "invalid_request_error", res.text);
  if (code) assert.equal(e.code, code, res.text);
  if (re) assert.match(e.message, re);
}

const ref = {};
const failed = await runTap([
  ["GET /lora-adapters: llama.cpp shape, ordered by name, path is NAME@VERSION", async () => {
    const r = await fetch(`${d.base}/lora-adapters`);
    assert.equal(r.status, 200);
    const list = await r.json();
    assert.ok(Array.isArray(list) && list.length >= 2, JSON.stringify(list));
    list.forEach((e, i) => {
      assert.deepEqual(Object.keys(e).sort(), ["id", "path", "scale"]);
      assert.equal(e.id, i);
      assert.equal(e.scale, 0);
      assert.match(e.path, /^[A-Za-z0-9][A-Za-z0-9._-]*@\d+$/);
    });
    const names = list.map((e) => e.path.split("@")[0]);
    assert.deepEqual(names, [...names].sort());
    ref.indexA = list.findIndex((e) => e.path.startsWith("demo-a@"));
    ref.indexB = list.findIndex((e) => e.path.startsWith("demo-b@"));
    assert.ok(ref.indexA >= 0 && ref.indexB >= 0, JSON.stringify(list));
  }],
  ["references: base, demo-a, demo-b differ", async () => {
    ref.base = await textOf({});
    ref.a = await textOf({ model: "demo-a" });
    ref.b = await textOf({ model: "demo-b" });
    assert.notEqual(ref.a, ref.base);
    assert.notEqual(ref.b, ref.base);
    assert.notEqual(ref.a, ref.b);
  }],
  ["adapters [{demo-a, 1}] == model demo-a", async () => {
    assert.equal(await textOf({ adapters: [{ name: "demo-a", weight: 1 }] }), ref.a);
    assert.equal(await textOf({ adapters: [{ name: "demo-a" }], combination: "cat" }), ref.a);
  }],
  ["adapter_id (LoRAX/TGI) and adapter == demo-a", async () => {
    assert.equal(await textOf({ adapter_id: "demo-a" }), ref.a);
    assert.equal(await textOf({ adapter: "demo-a@1" }), ref.a);
  }],
  ["lora [{id: name, scale 1}] == demo-a", async () => {
    assert.equal(await textOf({ lora: [{ id: "demo-a", scale: 1 }] }), ref.a);
  }],
  ["lora [{id: index from GET /lora-adapters, scale 1}] == demo-a", async () => {
    assert.equal(await textOf({ lora: [{ id: ref.indexA, scale: 1 }] }), ref.a);
    assert.equal(await textOf({ lora: [{ id: ref.indexA, scale: 1 }, { id: ref.indexB, scale: 0 }] }), ref.a);
  }],
  ["adapters [{demo-a, 1}, {demo-b, 0}] == demo-a", async () => {
    assert.equal(await textOf({ adapters: [{ name: "demo-a", weight: 1 }, { name: "demo-b", weight: 0 }] }), ref.a);
  }],
  ["a composition with a negative weight differs from base, demo-a and demo-b", async () => {
    const t = await textOf({ adapters: [{ name: "demo-a", weight: 1 }, { name: "demo-b", weight: -1.5 }] });
    assert.notEqual(t, ref.base);
    assert.notEqual(t, ref.a);
    assert.notEqual(t, ref.b);
    // Deterministic: the same composition twice is the same text.
    assert.equal(await textOf({ adapters: [{ name: "demo-a", weight: 1 }, { name: "demo-b", weight: -1.5 }] }), t);
  }],
  ["lora with every scale 0 == base (llama.cpp: scale 0 is not applied)", async () => {
    assert.equal(await textOf({ lora: [{ id: "demo-a", scale: 0 }, { id: "demo-b", scale: 0 }] }), ref.base);
    assert.equal(await textOf({ lora: [] }), ref.base);
  }],
  ["cat: demo-a twice at 0.5 == demo-a at 1 (exact)", async () => {
    assert.equal(await textOf({ adapters: [{ name: "demo-a", weight: 0.5 }, { name: "demo-a", weight: 0.5 }] }), ref.a);
  }],
  ["linear: demo-a (rank 8) with demo-b (rank 4) is 400 naming both", async () => {
    const r = await post("/v1/completions", { model: BASE, ...gen, combination: "linear",
      adapters: [{ name: "demo-a", weight: 0.5 }, { name: "demo-b", weight: 0.5 }] });
    assertError(r, 400, "rank_mismatch", /demo-a.*rank 8.*demo-b.*rank 4/);
  }],
  ["linear: demo-a with itself at 0.5/0.5 succeeds", async () => {
    const t = await textOf({ combination: "linear", adapters: [{ name: "demo-a", weight: 0.5 }, { name: "demo-a", weight: 0.5 }] });
    assert.equal(typeof t, "string");
    // PEFT linear of one adapter at weight 1 is that adapter.
    assert.equal(await textOf({ combination: "linear", adapters: [{ name: "demo-a", weight: 1 }] }), ref.a);
  }],
  ["streaming a composition gives the same text as the plain answer", async () => {
    const fields = { adapters: [{ name: "demo-a", weight: 0.8 }, { name: "demo-b", weight: -0.6 }] };
    const want = await textOf(fields);
    const s = await post("/v1/completions", { model: BASE, ...gen, ...fields, stream: true });
    assert.equal(s.status, 200, s.text);
    assert.match(s.headers.get("content-type"), /^text\/event-stream/);
    const events = s.text.split("\n\n").filter((e) => e.length);
    assert.equal(events.at(-1), "data: [DONE]");
    let text = "", finish = null;
    for (const e of events.slice(0, -1)) {
      const chunk = JSON.parse(e.slice(6));
      text += chunk.choices[0].text;
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    assert.equal(text, want);
    assert.equal(finish, "length");
  }],
  ["the openai client passes lora and adapters through", async () => {
    const client = new OpenAI({ baseURL: `${d.base}/v1`, apiKey: "unused", maxRetries: 0 });
    const r = await client.completions.create({ model: BASE, ...gen, lora: [{ id: "demo-a", scale: 1 }] });
    assert.equal(r.choices[0].text, ref.a);
    const e = await client.completions.create({ model: BASE, ...gen, adapters: [{ name: "ghost" }] })
      .then(() => null, (err) => err);
    assert.ok(e instanceof OpenAI.NotFoundError, String(e));
  }],
  ["conflicting selectors are 400 naming the fields", async () => {
    assertError(await post("/v1/completions", { model: BASE, ...gen, adapter_id: "demo-a", lora: [] }),
      400, "conflicting_fields", /`adapter_id`, `lora`/);
    assertError(await post("/v1/completions", { model: "demo-a", ...gen, adapters: [{ name: "demo-b" }] }),
      400, "conflicting_fields", /`model`.*`adapters`/);
    assertError(await post("/v1/completions", { model: BASE, ...gen, combination: "linear" }),
      400, "conflicting_fields", /`combination`/);
  }],
  ["bad entries are 400 naming the path", async () => {
    const cases = [
      [{ adapters: [] }, "invalid_value", /`adapters` must hold 1 to 8/],
      [{ adapters: [{ name: "demo-a" }, { name: "demo-b", weight: "x" }] }, "invalid_type", /`adapters\[1\]\.weight` must be a finite number/],
      [{ adapters: [{ weight: 1 }] }, "missing_field", /`adapters\[0\]\.name`/],
      [{ adapters: [{ name: "demo-a", scale: 1 }] }, "unknown_field", /`adapters\[0\]\.scale`/],
      [{ adapters: [{ name: "demo-a" }], combination: "sum" }, "invalid_value", /`combination`/],
      [{ lora: [{ id: -1, scale: 1 }] }, "invalid_value", /`lora\[0\]\.id`/],
      [{ lora: [{ id: 0 }] }, "missing_field", /`lora\[0\]\.scale`/],
      [{ lora: [{ id: "demo-a", scale: 1 }, { id: "demo-a", scale: 1 }] }, "invalid_value", /`lora\[1\]\.id`/],
      [{ adapter_id: 5 }, "invalid_type", /`adapter_id`/],
    ];
    for (const [fields, code, re] of cases)
      assertError(await post("/v1/completions", { model: BASE, ...gen, ...fields }), 400, code, re);
    // A weight beyond float range (finite in JSON, infinite as a float).
    assertError(await post("/v1/completions", { model: BASE, ...gen, adapters: [{ name: "demo-a", weight: 1e300 }] }),
      400, "invalid_value", /`adapters\[0\]\.weight`/);
  }],
  ["unknown adapters are 404 model_not_found naming them", async () => {
    const cases = [
      [{ adapters: [{ name: "demo-a" }, { name: "ghost" }] }, /`ghost`.*adapters\[1\]\.name/],
      [{ adapter_id: "ghost@3" }, /`ghost@3`/],
      [{ lora: [{ id: 999, scale: 1 }] }, /index 999/],
      [{ lora: [{ id: "ghost", scale: 0 }] }, /`ghost`/],
      [{ model: "no-such-model", adapter_id: "demo-a" }, /`no-such-model`/],
    ];
    for (const [fields, re] of cases)
      assertError(await post("/v1/completions", { model: BASE, ...gen, ...fields }), 404, "model_not_found", re);
  }],
  ["daemon still healthy", async () => {
    assert.equal((await fetch(`${d.base}/healthz`)).status, 200);
  }],
]);
await d.stop();
process.exit(failed ? 1 : 0);
