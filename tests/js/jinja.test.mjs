// jinja.test.mjs - core/jinja against the reference renderer @huggingface/jinja (pinned in
// package.json), through $BUILD/tests/jinja_render. For every (chat template, conversation)
// one TAP line checks that both renderers succeed with byte-identical output, or both
// fail (a raise_exception in the template, a type error). Templates: the chat_template of
// the @lenml tokenizer packages plus tests/fixtures/chat_templates/*.jinja.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { Template } from "@huggingface/jinja";

const BUILD = process.env.BUILD || "build";
const TOOL = path.join(BUILD, "tests", "jinja_render");
const TMP = "tests/tmp/jinja_js";
fs.mkdirSync(TMP, { recursive: true });

let n = 0, failed = 0;
function tap(ok, name, diags = []) {
  n++;
  if (!ok) failed++;
  console.log(`${ok ? "ok" : "not ok"} ${n} - ${name}`);
  for (const d of diags) console.log(`# ${d}`);
}

function templates() {
  const out = [];
  for (const pkg of ["qwen2_5", "llama3", "internlm2"]) {
    const conf = JSON.parse(fs.readFileSync(`node_modules/@lenml/tokenizer-${pkg}/models/tokenizer_config.json`, "utf8"));
    out.push({ name: `lenml-${pkg}`, src: conf.chat_template });
  }
  const dir = "tests/fixtures/chat_templates";
  for (const f of fs.readdirSync(dir).filter((f) => f.endsWith(".jinja")).sort())
    out.push({ name: f.replace(/\.jinja$/, ""), src: fs.readFileSync(path.join(dir, f), "utf8") });
  return out;
}

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather \"now\" in a city",
    parameters: { type: "object", properties: { city: { type: "string", description: "City, e.g. Zürich" }, days: { type: "integer" } }, required: ["city"] },
  },
};

const conversations = {
  system_user: { messages: [{ role: "system", content: "You are terse." }, { role: "user", content: "Hello!" }], add_generation_prompt: true },
  user_only: { messages: [{ role: "user", content: "What is 2+2?" }], add_generation_prompt: false },
  multi_turn: {
    messages: [{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello, how can I help?" }, { role: "user", content: "Tell me a joke." }],
    add_generation_prompt: true,
  },
  multi_turn_system: {
    messages: [{ role: "system", content: "  Be kind.\n" }, { role: "user", content: "One" }, { role: "assistant", content: "Two" }, { role: "user", content: "Three" }],
    add_generation_prompt: false,
  },
  special_chars: {
    messages: [
      { role: "user", content: "  Ünïcödé 日本語 🦙 'single' \"double\" back\\slash\ttab\nnew\r\nline {{ not a tag }} {% nor this %} <|im_end|>  " },
      { role: "assistant", content: "<think>\nhmm\n</think>\n\nÀ bientôt — \u2028sep\u00a0nbsp" },
      { role: "user", content: "\n\n" },
    ],
    add_generation_prompt: true,
  },
  empty_content: { messages: [{ role: "user", content: "" }, { role: "assistant", content: "" }, { role: "user", content: "x" }], add_generation_prompt: true },
  bad_alternation: { messages: [{ role: "user", content: "a" }, { role: "user", content: "b" }], add_generation_prompt: true },
  assistant_first: { messages: [{ role: "assistant", content: "I start." }, { role: "user", content: "ok" }], add_generation_prompt: false },
  tools: {
    messages: [
      { role: "system", content: "Use tools." },
      { role: "user", content: "Weather in Zürich?" },
      { role: "assistant", content: "", tool_calls: [{ type: "function", function: { name: "get_weather", arguments: { city: "Zürich", days: 2 } } }] },
      { role: "tool", content: "{\"temp\": 21.5}" },
      { role: "user", content: "<tool_response>x</tool_response>" },
    ],
    tools: [weather],
    add_generation_prompt: true,
  },
  null_content: { messages: [{ role: "user", content: "q" }, { role: "assistant", content: null }], add_generation_prompt: false },
};

function renderJs(src, ctx) {
  try {
    return { ok: true, out: new Template(src).render(ctx) };
  } catch (e) {
    return { ok: false, err: String(e && e.message) };
  }
}

function renderC(tplFile, ctxFile) {
  const r = spawnSync(TOOL, [tplFile, ctxFile], { maxBuffer: 1 << 28 });
  if (r.error) throw r.error;
  return r.status === 0 ? { ok: true, out: r.stdout.toString("utf8") } : { ok: false, err: r.stderr.toString("utf8").trim() };
}

let matched = 0;
for (const t of templates()) {
  const tplFile = path.join(TMP, `${t.name}.jinja`);
  fs.writeFileSync(tplFile, t.src);
  for (const [cname, conv] of Object.entries(conversations)) {
    const ctx = { bos_token: "<s>", eos_token: "</s>", ...conv };
    const ctxFile = path.join(TMP, `${cname}.json`);
    fs.writeFileSync(ctxFile, JSON.stringify(ctx));
    const js = renderJs(t.src, ctx);
    const c = renderC(tplFile, ctxFile);
    const same = js.ok === c.ok && (!js.ok || js.out === c.out);
    if (same) matched++;
    const diags = [];
    if (!same) {
      diags.push(`js: ${js.ok ? JSON.stringify(js.out) : "error " + js.err}`);
      diags.push(`c:  ${c.ok ? JSON.stringify(c.out) : "error " + c.err}`);
    }
    tap(same, `${t.name} x ${cname} (${js.ok ? "renders" : "raises"})`, diags);
  }
}

// Raising must carry the template's own message through RC_INVALID.
{
  const tplFile = path.join(TMP, "raise.jinja");
  fs.writeFileSync(tplFile, "{{ raise_exception('roles must alternate') }}");
  fs.writeFileSync(path.join(TMP, "empty.json"), "{}");
  const c = renderC(tplFile, path.join(TMP, "empty.json"));
  tap(!c.ok && c.err.includes("invalid") && c.err.includes("roles must alternate"), "raise_exception message", [c.err || ""]);
}

console.log(`# ${matched} template x conversation pairs byte-identical`);
console.log(`1..${n}`);
process.exit(failed ? 1 : 0);
