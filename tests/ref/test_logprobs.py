"""test_logprobs.py - completions `logprobs` / `echo` and POST /v1/score against numpy.

Run from the repo root by /usr/bin/python3 (tests/run.sh). Starts the daemon on the tiny
test model (tests/integration/daemon.py) and compares every logprob it reports with
log_softmax of tests/ref/ref_llama.py's float64 logits at the same position:

  - greedy completion with logprobs=3: each generated token's logprob, and its top-3
    alternatives (values; the chosen greedy token is the top-1);
  - echo + logprobs: the prompt tokens' logprobs (the first is null), then the generated;
  - /v1/score: each target token's logprob, total_logprob and loss = -total / n;
  - the same score through an adapter (the reference applies the PEFT LoRA);
  - chat completions with logprobs + top_logprobs (OpenAI's chat shape), plain and
    streamed, base and adapter: each generated token's logprob and top alternatives
    against numpy, and each entry's "token" / "bytes" against the tokenizer.json decoded
    here in Python (raw bytes for a lone byte of a multi-byte character);
  - chat's top_logprobs without logprobs (or above 20) is 400.

Tolerance: |adapterd - ref| <= 2e-3 per logprob (float32 forward vs float64 reference).
Prints TAP and "# max abs err" diagnostics.
"""

import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, HERE)
import daemon  # noqa: E402
import hf_fixtures as hf  # noqa: E402
import ref_llama as ref  # noqa: E402

TOL = 2e-3
TMP = os.path.join(ROOT, "tests", "tmp", "ref", "logprobs")
n_test = 0
n_fail = 0


def tap(cond, name):
    global n_test, n_fail
    n_test += 1
    if not cond:
        n_fail += 1
    print("%s %d - %s" % ("ok" if cond else "not ok", n_test, name), flush=True)
    return cond


def diag(msg):
    for line in str(msg).splitlines():
        print("# " + line, flush=True)


def log_softmax(logits):
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def post(d, path, body):
    st, _, data = d.request("POST", path, body)
    doc = json.loads(data)
    if st != 200:
        diag("%s -> %d %s" % (path, st, data[:300]))
    return st, doc


def tokenize(d, text, add_special=True):
    st, doc = post(d, "/tokenize", {"model": "base", "prompt": text,
                                    "add_special_tokens": add_special})
    return doc["tokens"] if st == 200 else None


def check_completion(d, model, name, lora=None):
    prompt = "The quick brown fox jumps"
    ids = tokenize(d, prompt)
    st, doc = post(d, "/v1/completions", {"model": name, "prompt": prompt, "max_tokens": 4,
                                          "temperature": 0, "logprobs": 3, "echo": True,
                                          "return_token_ids": True, "ignore_eos": True})
    if not tap(st == 200, "%s: echo + logprobs completion answers 200" % name):
        return
    ch = doc["choices"][0]
    gen = ch["token_ids"]
    seq = ids + gen
    lp_ref = log_softmax(ref.forward(model, seq, lora))  # row p: distribution of token p+1
    want = [None] + [lp_ref[p - 1, seq[p]] for p in range(1, len(seq))]
    got = ch["logprobs"]["token_logprobs"]
    tap(len(got) == len(seq) and got[0] is None,
        "%s: one logprob per prompt and generated token, the first null" % name)
    err = max(abs(g - w) for g, w in zip(got[1:], want[1:]))
    diag("max abs err %s token logprobs = %.2e" % (name, err))
    tap(err <= TOL, "%s: token logprobs match numpy (echo prompt + generated)" % name)
    # top alternatives of the generated tokens: greedy picks the top-1
    tops = ch["logprobs"]["top_logprobs"]
    terr = 0.0
    ok = True
    for k, p in enumerate(range(len(ids), len(seq))):
        vals = sorted(tops[p].values(), reverse=True)
        ref_top = np.sort(lp_ref[p - 1])[::-1][:3]
        ok &= len(vals) >= 1
        terr = max(terr, max(abs(a - b) for a, b in zip(vals, ref_top)))
        ok &= abs(got[p] - vals[0]) <= TOL  # the greedy choice is the most likely token
    diag("max abs err %s top-3 = %.2e" % (name, terr))
    tap(ok and terr <= TOL, "%s: top-3 alternatives match numpy; greedy = top-1" % name)


def check_score(d, model, name, lora=None):
    prompt, target = "Once upon a time", " there was a fox"
    both = tokenize(d, prompt + target)
    n_prompt = len(tokenize(d, prompt))
    st, doc = post(d, "/v1/score", {"model": name, "prompt": prompt, "target": target})
    if not tap(st == 200, "%s: /v1/score answers 200" % name):
        return
    lp_ref = log_softmax(ref.forward(model, both, lora))
    want = [lp_ref[p - 1, both[p]] for p in range(n_prompt, len(both))]
    toks = doc["tokens"]
    tap([t["token_id"] for t in toks] == both[n_prompt:] and
        doc["target_tokens"] == len(want) and doc["prompt_tokens"] == n_prompt,
        "%s: score covers exactly the target tokens" % name)
    err = max(abs(t["logprob"] - w) for t, w in zip(toks, want))
    diag("max abs err %s score = %.2e" % (name, err))
    tap(err <= TOL, "%s: score logprobs match numpy" % name)
    tot = float(sum(want))
    tap(abs(doc["total_logprob"] - tot) <= TOL * len(want) and
        abs(doc["loss"] + tot / len(want)) <= TOL,
        "%s: total_logprob and loss = -mean" % name)


CHAT_TEMPLATE = os.path.join(ROOT, "tests", "fixtures", "chat_templates", "llama2_chat.jinja")
CHAT_MESSAGES = [{"role": "user", "content": "Tell me a story about a fox."}]


def load_pieces(model_dir):
    """id -> (text, bytes) of each token decoded alone, by the Llama-2 tokenizer.json's
    decoder (Replace U+2581 -> space, ByteFallback, Strip one leading space), written here
    independently of the C tokenizer. bytes: the text's UTF-8, or the raw byte of a
    <0xNN> piece that is not a character by itself."""
    with open(os.path.join(model_dir, "tokenizer.json")) as f:
        tj = json.load(f)
    pieces = {i: p for p, i in tj["model"]["vocab"].items()}
    for a in tj["added_tokens"]:
        pieces[a["id"]] = a["content"]
    added = {a["id"] for a in tj["added_tokens"]}

    def alone(i):
        p = pieces[i]
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", p)
        if i in added:
            return p, list(p.encode())
        if m:
            raw = bytes([int(m.group(1), 16)])
            text = raw.decode("utf-8", errors="replace")
            return text, list(raw)
        text = p.replace("\u2581", " ")
        text = text[1:] if text.startswith(" ") else text
        return text, list(text.encode())
    return alone


def sse_docs(data):
    out = []
    for block in data.decode().split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            out.append(json.loads(block[6:]))
    return out


def check_chat_entry(e, want_text, want_bytes):
    """One {"token", "logprob", "bytes"} entry against the Python decode."""
    return e["token"] == want_text and e["bytes"] == want_bytes and \
        isinstance(e["logprob"], float)


def check_chat(d, model, name, lora, alone, n_top):
    body = {"model": name, "messages": CHAT_MESSAGES, "max_tokens": 48, "temperature": 0,
            "logprobs": True, "top_logprobs": n_top, "return_token_ids": True,
            "ignore_eos": True}
    st, doc = post(d, "/v1/chat/completions", body)
    if not tap(st == 200, "%s: chat with logprobs answers 200" % name):
        return 0
    ch = doc["choices"][0]
    ids, gen = ch["prompt_token_ids"], ch["token_ids"]
    content = ch["logprobs"]["content"]
    tap(list(ch["logprobs"].keys()) == ["content"] and len(content) == len(gen) and
        all(set(e) == {"token", "logprob", "bytes", "top_logprobs"} and
            len(e["top_logprobs"]) == n_top for e in content),
        "%s: chat logprobs.content has one entry per generated token, %d alternatives each"
        % (name, n_top))
    seq = ids + gen
    lp_ref = log_softmax(ref.forward(model, seq, lora))
    err = terr = 0.0
    greedy_top = True
    for k, e in enumerate(content):
        row = lp_ref[len(ids) + k - 1]
        err = max(err, abs(e["logprob"] - row[gen[k]]))
        vals = [t["logprob"] for t in e["top_logprobs"]]
        ref_top = np.sort(row)[::-1][:n_top]
        terr = max(terr, max(abs(a - b) for a, b in zip(vals, ref_top)))
        greedy_top &= vals == sorted(vals, reverse=True) and abs(vals[0] - e["logprob"]) <= TOL
    diag("max abs err %s chat logprobs = %.2e, top-%d = %.2e" % (name, err, n_top, terr))
    tap(err <= TOL, "%s: chat token logprobs match numpy" % name)
    tap(terr <= TOL and greedy_top,
        "%s: chat top_logprobs match numpy, sorted, greedy = top-1" % name)
    # token text and bytes: the chosen token by id; the alternatives by the ids numpy ranks
    # (skipping ranks whose logprob ties a neighbour's, where the order is arbitrary)
    ok, n_raw = True, 0
    for k, e in enumerate(content):
        text, raw = alone(gen[k])
        ok &= check_chat_entry(e, text, raw)
        row = lp_ref[len(ids) + k - 1]
        order = np.argsort(-row, kind="stable")[:n_top + 1]
        for r, t in enumerate(e["top_logprobs"]):
            tied = any(abs(row[order[r]] - row[order[q]]) < 1e-6
                       for q in (r - 1, r + 1) if 0 <= q <= n_top)
            text, raw = alone(int(order[r]))
            if not tied:
                ok &= check_chat_entry(t, text, raw)
            n_raw += text == "\ufffd" and len(t["bytes"]) == 1 and t["bytes"][0] >= 0x80
    diag("%s: %d alternatives are lone bytes of a multi-byte character" % (name, n_raw))
    tap(ok, "%s: chat tokens and bytes match the tokenizer decoded in Python" % name)
    # streamed: the same entries, spread over the chunks, the finish chunk without any
    st, _, data = d.request("POST", "/v1/chat/completions", dict(body, stream=True))
    docs = sse_docs(data) if st == 200 else []
    streamed = [e for c in docs if c["choices"][0]["logprobs"]
                for e in c["choices"][0]["logprobs"]["content"]]
    same = len(streamed) == len(content) and all(
        a["token"] == b["token"] and a["bytes"] == b["bytes"] and
        abs(a["logprob"] - b["logprob"]) <= 1e-9 and
        [t["bytes"] for t in a["top_logprobs"]] == [t["bytes"] for t in b["top_logprobs"]]
        for a, b in zip(streamed, content))
    tap(st == 200 and same and docs and docs[-1]["choices"][0]["finish_reason"] and
        docs[-1]["choices"][0]["logprobs"] is None,
        "%s: streamed chat chunks carry the same logprobs entries, in order" % name)
    return n_raw


def check_chat_errors(d):
    base = {"model": "base", "messages": CHAT_MESSAGES, "max_tokens": 2}
    st, doc = post(d, "/v1/chat/completions", dict(base, top_logprobs=2))
    tap(st == 400 and doc["error"]["code"] == "invalid_value" and
        "top_logprobs" in doc["error"]["message"], "chat top_logprobs without logprobs is 400")
    st, doc = post(d, "/v1/chat/completions", dict(base, logprobs=True, top_logprobs=21))
    tap(st == 400 and "top_logprobs" in doc["error"]["message"], "chat top_logprobs 21 is 400")
    st, doc = post(d, "/v1/chat/completions", dict(base, logprobs=False))
    tap(st == 200 and doc["choices"][0]["logprobs"] is None, "chat logprobs false: null")
    st, doc = post(d, "/v1/chat/completions", dict(base, logprobs=True))
    c = doc["choices"][0]["logprobs"]["content"] if st == 200 else []
    tap(len(c) == doc.get("usage", {}).get("completion_tokens") and
        all(e["top_logprobs"] == [] for e in c), "chat logprobs without top_logprobs: []")


def main():
    os.makedirs(TMP, exist_ok=True)
    model_dir = daemon.tiny_model()
    model = ref.load_model(model_dir)
    ad = os.path.join(TMP, "adapters", "lp")
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    hf.make_lora(ad, cfg, seed=7, r=4, alpha=8, targets=["q_proj", "v_proj"])
    lora = ref.load_lora(ad)
    alone = load_pieces(model_dir)
    with daemon.Daemon(["--adapters-dir", os.path.dirname(ad), "--model-name", "base",
                        "--chat-template", CHAT_TEMPLATE], model=model_dir) as d:
        check_completion(d, model, "base")
        check_completion(d, model, "lp", lora)
        check_score(d, model, "base")
        check_score(d, model, "lp", lora)
        st, doc = post(d, "/v1/score", {"model": "base", "prompt": "Hi"})
        tap(st == 400 and "target" in doc["error"]["message"], "score without target is 400")
        st, doc = post(d, "/v1/completions", {"model": "base", "prompt": "Hi", "logprobs": 21})
        tap(st == 400, "logprobs above 20 is 400")
        st, doc = post(d, "/v1/completions", {"model": "base", "prompt": "Hi", "echo": True,
                                              "stream": True})
        tap(st == 400, "echo with stream is refused (400) for now")
        n_raw = check_chat(d, model, "base", None, alone, 20)
        n_raw += check_chat(d, model, "lp", lora, alone, 3)
        tap(n_raw > 0, "the chat answers had a lone-byte token to check raw bytes on")
        check_chat_errors(d)
    print("1..%d" % n_test)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
