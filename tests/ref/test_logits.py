"""test_logits.py - adapterd's forward pass (with and without LoRA) against the numpy reference.

Run from the repo root by /usr/bin/python3 (tests/run.sh). Builds fixture models with
tools/hf_fixtures.py under tests/tmp/ref/logits, runs $BUILD/tests/logits_dump (one batched
core_forward per case, several sequences of different lengths, per-sequence adapters) and
compares every logit of every position to tests/ref/ref_llama.py (float64):

    max|adapterd - ref| / max(1e-6, max|ref|) <= 1e-4   per sequence

Prints TAP ("ok N - name") and "# max rel err <case> = <value>" diagnostics.
"""

import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, HERE)
import hf_fixtures as hf  # noqa: E402
import ref_llama as ref  # noqa: E402

TOL = 1e-4
BUILD = os.environ.get("BUILD", "build")
DUMP = os.path.join(ROOT, BUILD, "tests", "logits_dump") if not os.path.isabs(BUILD) \
    else os.path.join(BUILD, "tests", "logits_dump")
TMP = os.path.join(ROOT, "tests", "tmp", "ref", "logits")

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


def run_dump(model_dir, loras, seqs, steps=False, expect_fail=False):
    """loras: list of (dir, scale); seqs: list of (tokens, lora index or None).
    Returns a list of (T, V) float32 arrays, or None on failure (stderr in diagnostics)."""
    out = os.path.join(TMP, "out.f32")
    if os.path.exists(out):
        os.remove(out)
    cmd = [DUMP, "--model", model_dir]
    for d, scale in loras:
        cmd += ["--lora", d, "--scale", repr(float(scale))]
    if steps:
        cmd.append("--steps")
    cmd += ["--out", out]
    for toks, li in seqs:
        cmd.append(",".join(str(int(t)) for t in toks) + ("" if li is None else "@%d" % li))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        if not expect_fail:
            diag("logits_dump failed (exit %d): %s" % (p.returncode, p.stderr.strip()[-800:]))
        return None, p
    V = ref_vocab(model_dir)
    data = np.fromfile(out, dtype="<f4")
    total = sum(len(t) for t, _ in seqs) * V
    if data.size != total:
        diag("logits_dump wrote %d floats, expected %d" % (data.size, total))
        return None, p
    res, at = [], 0
    for toks, _ in seqs:
        n = len(toks) * V
        res.append(data[at:at + n].reshape(len(toks), V))
        at += n
    return res, p


_vocab = {}


def ref_vocab(model_dir):
    if model_dir not in _vocab:
        import json
        with open(os.path.join(model_dir, "config.json")) as f:
            _vocab[model_dir] = json.load(f)["vocab_size"]
    return _vocab[model_dir]


_models = {}


def ref_model(model_dir):
    if model_dir not in _models:
        _models[model_dir] = ref.load_model(model_dir)
    return _models[model_dir]


def rel_err(got, want):
    return float(np.max(np.abs(got.astype(np.float64) - want)) / max(1e-6, np.max(np.abs(want))))


def check_case(name, model_dir, loras, seqs, steps=False):
    """Runs one batch through adapterd and the reference; one TAP line."""
    got, _ = run_dump(model_dir, loras, seqs, steps)
    if got is None:
        return tap(False, name)
    m = ref_model(model_dir)
    lora_refs = [ref.load_lora(d, scale) for d, scale in loras]
    errs = []
    for (toks, li), g in zip(seqs, got):
        want = ref.forward(m, toks, None if li is None else lora_refs[li])
        errs.append(rel_err(g, want))
    worst = max(errs)
    print("# max rel err %s = %.3g" % (name, worst), flush=True)
    if worst > TOL:
        diag("per-sequence: " + ", ".join("len %d: %.3g" % (len(t), e)
                                         for (t, _), e in zip(seqs, errs)))
    return tap(worst <= TOL and np.all(np.isfinite(np.concatenate([g.ravel() for g in got]))),
               "%s matches numpy (max rel err %.2g <= %g)" % (name, worst, TOL))


def make_fixtures():
    shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP)
    P = lambda *a: os.path.join(TMP, *a)  # noqa: E731
    gqa = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 160,
           "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2}
    cfgs = {}
    cfgs["gqa"] = hf.make_llama(P("gqa"), gqa, seed=11)
    cfgs["qwen2"] = hf.make_llama(P("qwen2"), gqa, seed=12, qkv_bias=True)
    cfgs["tied"] = hf.make_llama(P("tied"), gqa, seed=13, tie=True)
    cfgs["bf16"] = hf.make_llama(P("bf16"), gqa, seed=14, dtype="BF16")
    cfgs["f16"] = hf.make_llama(P("f16"), gqa, seed=15, dtype="F16")
    cfgs["sharded"] = hf.make_llama(P("sharded"), gqa, seed=16, shards=3)
    cfgs["mqa"] = hf.make_llama(P("mqa"), dict(gqa, num_key_value_heads=1), seed=17)
    cfgs["headdim"] = hf.make_llama(P("headdim"), dict(gqa, head_dim=32), seed=18)
    rope3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    cfgs["llama3rope"] = hf.make_llama(P("llama3rope"), dict(gqa, rope_scaling=rope3,
                                                           rope_theta=500000.0), seed=19)
    c = cfgs["gqa"]
    hf.make_lora(P("lora_qv"), c, seed=21, r=4, alpha=8, targets=["q_proj", "v_proj"])
    hf.make_lora(P("rslora_all"), c, seed=22, r=8, alpha=16, targets=hf.MODULES, rslora=True)
    hf.make_lora(P("lora_bf16_layers"), c, seed=23, r=4, alpha=4,
                 targets=["o_proj", "down_proj"], layers=[0, 2], dtype="BF16")
    hf.make_lora(P("lora_qwen2"), cfgs["qwen2"], seed=24, r=4, alpha=8,
                 targets=["q_proj", "k_proj", "v_proj"])
    hf.make_lora(P("lora_headdim"), cfgs["headdim"], seed=25, r=4, alpha=8,
                 targets=["q_proj", "o_proj"])
    return P


def main():
    os.chdir(ROOT)
    if not os.access(DUMP, os.X_OK):
        tap(False, "logits_dump binary exists at %s (build with: make %s)"
            % (DUMP, os.path.relpath(DUMP, ROOT)))
        return 1
    P = make_fixtures()
    rng = np.random.default_rng(1234)
    seq = lambda n, V=300: rng.integers(0, V, n).tolist()  # noqa: E731
    # Lengths 1 (a lone token), odd, longer than a GEMM tile edge, and one in between.
    base_seqs = [(seq(1), None), (seq(7), None), (seq(23), None), (seq(12), None)]

    for name in ("gqa", "qwen2", "tied", "bf16", "f16", "sharded", "mqa", "headdim",
                 "llama3rope"):
        check_case("base %s" % name, P(name), [], base_seqs)

    lqv, lrs, lbf = P("lora_qv"), P("rslora_all"), P("lora_bf16_layers")
    lora_seqs = [(t, 0) for t, _ in base_seqs]
    check_case("lora q,v r4", P("gqa"), [(lqv, 1.0)], lora_seqs)
    check_case("rslora all seven r8", P("gqa"), [(lrs, 1.0)], lora_seqs)
    check_case("lora bf16 o,down layers 0,2", P("gqa"), [(lbf, 1.0)], lora_seqs)
    check_case("lora scale 0.5", P("gqa"), [(lqv, 0.5)], lora_seqs)
    check_case("lora qwen2 q,k,v (bias model)", P("qwen2"), [(P("lora_qwen2"), 1.0)],
               lora_seqs)
    check_case("lora head_dim 32", P("headdim"), [(P("lora_headdim"), 1.0)], lora_seqs)

    s = [t for t, _ in base_seqs]
    mixed = [(s[0], None), (s[1], 0), (s[2], 1), (s[3], None), (s[1], 1), (s[2], 0),
             (seq(5), 2), (s[3], 1)]
    adapters = [(lqv, 1.0), (lrs, 1.0), (lbf, 1.0)]
    check_case("mixed batch base + 3 adapters", P("gqa"), adapters, mixed)

    long3 = [(seq(3), None), (seq(9), 0), (seq(20), 1), (seq(4), None), (seq(14), 2)]
    check_case("steps prefill + 2 decodes", P("gqa"), adapters, long3, steps=True)
    check_case("steps qwen2 base", P("qwen2"), [], [(t, None) for t, _ in long3], steps=True)
    # Incremental decode must equal a full recompute of the same batch by adapterd itself.
    full, _ = run_dump(P("gqa"), adapters, long3)
    inc, _ = run_dump(P("gqa"), adapters, long3, steps=True)
    if full is not None and inc is not None:
        e = max(rel_err(a, b.astype(np.float64)) for a, b in zip(inc, full))
        print("# max rel err steps vs full (adapterd) = %.3g" % e)
        tap(e <= TOL, "incremental decode equals full recompute (%.2g)" % e)
    else:
        tap(False, "incremental decode equals full recompute")

    # The adapters must matter: far above the tolerance, and greedy tokens must change, so
    # the comparisons above could fail if adapterd ignored an adapter.
    m = ref_model(P("gqa"))
    for d in (lqv, lrs):
        la = ref.load_lora(d)
        d_ref = max(rel_err(ref.forward(m, t, la), ref.forward(m, t)) for t in s[1:])
        flips = sum(int(np.sum(ref.forward(m, t, la).argmax(-1) != ref.forward(m, t).argmax(-1)))
                    for t in s)
        print("# lora effect %s: rel change %.3g, argmax flips %d" % (os.path.basename(d), d_ref,
                                                                      flips))
        tap(d_ref > 1000 * TOL and flips > 0,
            "%s changes logits by >> tolerance (%.2g) and flips argmax" % (os.path.basename(d),
                                                                          d_ref))
    got_b, _ = run_dump(P("gqa"), [(lqv, 1.0)], [(s[2], None), (s[2], 0)])
    if got_b is not None:
        e = rel_err(got_b[1], got_b[0].astype(np.float64))
        tap(e > 1000 * TOL, "adapterd output differs with the adapter (%.2g)" % e)
    else:
        tap(False, "adapterd output differs with the adapter")

    # Adapters for another base must be refused, not silently applied.
    bad, p = run_dump(P("gqa"), [(P("lora_headdim"), 1.0)], [(s[1], 0)], expect_fail=True)
    tap(bad is None and p.returncode != 0,
        "adapter for a different base is refused (%s)" % p.stderr.strip()[-120:].replace("\n", " "))

    # The built-in default model of `make run` (vocab 32000, BF16, tied) with its demo adapters.
    dd = os.path.join(TMP, "default-data")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_default_data.py"), dd],
                       capture_output=True, text=True, timeout=300)
    if tap(p.returncode == 0, "make_default_data.py runs"):
        demo = [(os.path.join(dd, "adapters", n), 1.0) for n in ("demo-a", "demo-b")]
        ds = [([1] + seq(9, 32000), None), ([1] + seq(4, 32000), 0), ([1] + seq(6, 32000), 1)]
        check_case("default-data model + demo adapters", os.path.join(dd, "model"), demo, ds)
    else:
        diag(p.stderr)

    # A token id == vocab size is refused by core_forward, not read out of bounds.
    bad, p = run_dump(P("gqa"), [], [(s[1], None), ([1, 300, 2], None)], expect_fail=True)
    tap(bad is None and p.returncode != 0 and "Sanitizer" not in p.stderr,
        "token id == n_vocab is refused (%s)" % p.stderr.strip()[-120:].replace("\n", " "))

    print("1..%d" % n_test)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
