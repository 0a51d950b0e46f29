// openai.test.mjs - the official `openai` npm client against adapterd's /v1/completions.
// Checks: plain and streamed completions with the base model and with an adapter; a LoRA
// changes the output; the same seed gives the same sampled text; usage counts; a stored
// router used as a model (extra body fields return_routing / router pass through the
// client); errors surface as the client's typed exceptions with the right status.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { makeData, startDaemon, runTap } from "./daemon.mjs";

const data = makeData("tests/tmp/js-openai");
const d = await startDaemon({ dataDir: data });
const client = new OpenAI({ baseURL: `${d.base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60000 });
const prompt = "Once upon a time";

async function complete(model, extra = {}) {
  return client.completions.create({ model, prompt, max_tokens: 12, temperature: 0, ...extra });
}

async function streamText(model, extra = {}) {
  const stream = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0, stream: true, ...extra });
  let text = "", finish = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    text += chunk.choices[0]?.text ?? "";
    if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
  }
  return { text, finish, chunks };
}

const failed = await runTap([
  ["models list names the base and both demo adapters", async () => {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    assert.ok(ids.includes("tiny-llama"), ids.join(","));
    assert.ok(ids.includes("demo-a") && ids.includes("demo-b"), ids.join(","));
  }],
  ["base completion: text, finish_reason, usage", async () => {
    const r = await complete("tiny-llama");
    assert.equal(r.object, "text_completion");
    assert.equal(r.choices.length, 1);
    assert.equal(typeof r.choices[0].text, "string");
    assert.ok(r.choices[0].text.length > 0);
    assert.ok(["length", "stop"].includes(r.choices[0].finish_reason));
    assert.ok(r.usage.prompt_tokens >= 5, JSON.stringify(r.usage));
    assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 12);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  }],
  ["a LoRA adapter changes the greedy output", async () => {
    const base = await complete("tiny-llama");
    const a = await complete("demo-a");
    const b = await complete("demo-b");
    assert.notEqual(a.choices[0].text, base.choices[0].text);
    assert.notEqual(b.choices[0].text, base.choices[0].text);
    assert.notEqual(a.choices[0].text, b.choices[0].text);
  }],
  ["greedy decoding is deterministic", async () => {
    const x = await complete("demo-a");
    const y = await complete("demo-a");
    assert.equal(x.choices[0].text, y.choices[0].text);
  }],
  ["same seed, same sampled text; another seed differs", async () => {
    const opts = { temperature: 1.0, top_p: 0.95, max_tokens: 24 };
    const x = await complete("tiny-llama", { ...opts, seed: 1234 });
    const y = await complete("tiny-llama", { ...opts, seed: 1234 });
    assert.equal(x.choices[0].text, y.choices[0].text);
    let differs = false;
    for (const seed of [1, 2, 3]) {
      const z = await complete("tiny-llama", { ...opts, seed });
      if (z.choices[0].text !== x.choices[0].text) differs = true;
    }
    assert.ok(differs, "three other seeds all gave the seed-1234 text");
  }],
  ["streaming equals the non-streamed text (base and adapter)", async () => {
    for (const model of ["tiny-llama", "demo-b"]) {
      const whole = await complete(model);
      const s = await streamText(model);
      assert.equal(s.text, whole.choices[0].text, model);
      assert.equal(s.finish, whole.choices[0].finish_reason, model);
      assert.ok(s.chunks >= 2, `${model}: ${s.chunks} chunks`);
    }
  }],
  ["the adapter field selects an adapter too", async () => {
    const viaModel = await complete("demo-a");
    const viaField = await complete("tiny-llama", { adapter: "demo-a" });
    assert.equal(viaField.choices[0].text, viaModel.choices[0].text);
  }],
  ["a router (POST /v1/routers) is a model: routing, streaming, and a typed 400", async () => {
    const put = await fetch(`${d.base}/v1/routers`, { method: "POST", body: JSON.stringify({
      name: "mix", config: { router_type: "arrow", experts: ["demo-a", "demo-b"], top_k: 1 } }) });
    assert.equal(put.status, 201, await put.text());
    const r = await complete("mix", { return_routing: true });
    assert.ok(r.choices[0].text.length > 0);
    assert.deepEqual(r.routing.adapters, ["demo-a", "demo-b"]);
    for (const row of r.routing.layers) {
      assert.equal(row.length, 2);
      assert.ok(Math.abs(row[0] + row[1] - 1) < 1e-4, JSON.stringify(row));
    }
    const s = await streamText("mix");
    assert.equal(s.text, r.choices[0].text);
    const viaField = await complete("tiny-llama", { router: { name: "mix", top_k: 1 } });
    assert.equal(viaField.choices[0].text, r.choices[0].text);
    await assert.rejects(() => complete("tiny-llama", { router: { name: "mix", top_k: 3 } }),
      (e) => e instanceof OpenAI.BadRequestError && /top_k/.test(e.message));
  }],
  ["unknown model is a 404 NotFoundError", async () => {
    await assert.rejects(() => complete("no-such-adapter"), (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
  }],
  ["bad field is a 400 BadRequestError naming the field", async () => {
    await assert.rejects(() => complete("tiny-llama", { temperature: -1 }),
      (e) => e instanceof OpenAI.BadRequestError && /temperature/.test(e.message));
  }],
  ["daemon shuts down cleanly on SIGTERM", async () => {
    const code = await d.stop();
    assert.equal(code, 0);
  }],
]);
await d.stop();
process.exit(failed ? 1 : 0);
