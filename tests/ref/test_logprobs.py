"""test_logprobs.py - completions `logprobs` / `echo` and POST /v1/score against numpy.

Run from the repo root by /usr/bin/python3 (tests/run.sh). Starts the daemon on the tiny
test model (tests/integration/daemon.py) and compares every logprob it reports with
log_softmax of tests/ref/ref_llama.py's float64 logits at the same position:

  - greedy completion with logprobs=3: each generated token's logprob, and its top-3
    alternatives (values; the chosen greedy token is the top-1);
  - echo + logprobs: the prompt tokens' logprobs (the first is null), then the generated;
  - /v1/score: each target token's logprob, total_logprob and loss = -total / n;
  - the same score through an adapter (the reference applies the PEFT LoRA).

Tolerance: |adapterd - ref| <= 2e-3 per logprob (float32 forward vs float64 reference).
Prints TAP and "# max abs err" diagnostics.
"""

import json
import os
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


def main():
    os.makedirs(TMP, exist_ok=True)
    model_dir = daemon.tiny_model()
    model = ref.load_model(model_dir)
    ad = os.path.join(TMP, "adapters", "lp")
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    hf.make_lora(ad, cfg, seed=7, r=4, alpha=8, targets=["q_proj", "v_proj"])
    lora = ref.load_lora(ad)
    with daemon.Daemon(["--adapters-dir", os.path.dirname(ad), "--model-name", "base"],
                       model=model_dir) as d:
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
    print("1..%d" % n_test)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
