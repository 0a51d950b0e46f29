"""test_ref_selfcheck.py - invariants of the numpy reference (tests/ref/ref_llama.py) itself.

With no torch/transformers available, the reference is checked against properties that any
correct Llama forward pass has, each computed a second, different way:
  - causality: logits of a prefix do not depend on later tokens;
  - RoPE: rotate_half form == complex rotation of the pairs (x_i, x_{i+d/2});
    attention scores depend only on relative position;
  - GQA: a 2-kv-head model == the same model with its kv heads duplicated into 4 heads
    (query head h reads kv head h // n_rep, transformers' repeat_kv);
  - one token: logits == a hand-unrolled layer where attention returns v exactly;
  - LoRA: unmerged s*(xA^T)B^T == merged W + s*BA; rsLoRA scale alpha/sqrt(r);
  - tied == untied with lm_head = embed; zero q/k/v bias == no bias.
TAP output; run from the repo root by /usr/bin/python3.
"""

import copy
import math
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, HERE)
import hf_fixtures as hf  # noqa: E402
import ref_llama as ref  # noqa: E402

TMP = os.path.join(ROOT, "tests", "tmp", "ref", "selfcheck")
n_test = n_fail = 0


def tap(cond, name):
    global n_test, n_fail
    n_test += 1
    n_fail += 0 if cond else 1
    print("%s %d - %s" % ("ok" if cond else "not ok", n_test, name), flush=True)


def close(a, b, tol=1e-10):
    return float(np.max(np.abs(a - b)) / max(1e-12, np.max(np.abs(b)))) <= tol


def main():
    shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP)
    cfg = {"vocab_size": 50, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2}
    c = hf.make_llama(os.path.join(TMP, "m"), cfg, seed=5)
    m = ref.load_model(os.path.join(TMP, "m"))
    toks = [3, 17, 42, 8, 0, 49, 21, 5, 5, 30]
    full = ref.forward(m, toks)

    tap(all(close(ref.forward(m, toks[:k]), full[:k]) for k in (1, 4, 9)),
        "causal: prefix logits independent of later tokens")
    tap(not close(ref.forward(m, toks[:3] + [1] + toks[4:])[5:], full[5:], 1e-3),
        "later positions do depend on earlier tokens")

    # RoPE two ways.
    d = m.head_dim
    x = np.random.default_rng(0).standard_normal((6, 3, d))
    pos = np.arange(6) + 3
    inv = ref.rope_inv_freq(m)
    z = (x[..., :d // 2] + 1j * x[..., d // 2:]) * np.exp(1j * np.outer(pos, inv))[:, None, :]
    tap(close(ref.apply_rope(x, pos, inv), np.concatenate([z.real, z.imag], -1)),
        "rope rotate_half == complex rotation of (x_i, x_{i+d/2})")
    q, k = x[:, 0, :], x[:, 1, :]
    s1 = np.sum(ref.apply_rope(q[:, None], pos, inv) * ref.apply_rope(k[:, None], pos - 2, inv))
    s2 = np.sum(ref.apply_rope(q[:, None], pos + 7, inv) * ref.apply_rope(k[:, None], pos + 5, inv))
    tap(abs(s1 - s2) < 1e-9 * abs(s1) + 1e-12, "rope scores depend on relative position only")

    # GQA == MHA with duplicated kv heads.
    mha = copy.deepcopy(m)
    mha.cfg = dict(m.cfg, num_key_value_heads=4)
    mha.n_kv = 4
    for i in range(m.n_layers):
        for p in ("k_proj", "v_proj"):
            key = "model.layers.%d.self_attn.%s.weight" % (i, p)
            w = m.w[key].reshape(2, d, -1)
            mha.w[key] = np.repeat(w, 2, axis=0).reshape(4 * d, -1)
    tap(close(ref.forward(mha, toks), full), "GQA == MHA with kv heads repeated (h // n_rep)")

    # One token, hand-unrolled: softmax over one key is 1, so attention output is v;
    # position 0 means RoPE is the identity.
    w, eps = m.w, m.eps
    h = w["model.embed_tokens.weight"][toks[0]].copy()
    rms = lambda v, g: g * v / math.sqrt(np.mean(v * v) + eps)  # noqa: E731
    for i in range(m.n_layers):
        L = lambda n: w["model.layers.%d.%s.weight" % (i, n)]  # noqa: E731
        a = rms(h, L("input_layernorm"))
        v = L("self_attn.v_proj") @ a
        o = np.concatenate([v[(hh // 2) * d:(hh // 2 + 1) * d] for hh in range(4)])
        h = h + L("self_attn.o_proj") @ o
        a = rms(h, L("post_attention_layernorm"))
        g = L("mlp.gate_proj") @ a
        h = h + L("mlp.down_proj") @ (g / (1 + np.exp(-g)) * (L("mlp.up_proj") @ a))
    want = w["lm_head.weight"] @ rms(h, w["model.norm.weight"])
    tap(close(full[0], want), "one-token logits == hand-unrolled layers")

    # LoRA unmerged == merged; scale formula.
    for rs in (False, True):
        ld = os.path.join(TMP, "l%d" % rs)
        hf.make_lora(ld, c, seed=6, r=4, alpha=8, targets=hf.MODULES, rslora=rs)
        lo = ref.load_lora(ld)
        merged = copy.deepcopy(m)
        for (i, mod), (A, B, s) in lo.items():
            key = "model.layers.%d.%s.%s.weight" % (i, hf.PARENT[mod], mod)
            merged.w[key] = m.w[key] + s * (B @ A)
        s_want = 8 / 2.0 if rs else 8 / 4.0
        tap(close(ref.forward(m, toks, lo), ref.forward(merged, toks))
            and all(abs(s - s_want) < 1e-12 for _, _, s in lo.values())
            and not close(ref.forward(m, toks, lo), full, 1e-2),
            "lora %s: unmerged == merged W + sBA, s = %g" % ("rslora" if rs else "plain", s_want))

    # Tied embeddings and zero bias.
    tied = copy.deepcopy(m)
    tied.tied = True
    tied.w["model.embed_tokens.weight"] = m.w["lm_head.weight"].copy()
    untied = copy.deepcopy(tied)
    untied.tied = False
    tap(close(ref.forward(tied, toks), ref.forward(untied, toks)), "tied == untied with equal rows")
    zb = copy.deepcopy(m)
    for i in range(m.n_layers):
        for p, n in (("q_proj", 4), ("k_proj", 2), ("v_proj", 2)):
            zb.w["model.layers.%d.self_attn.%s.bias" % (i, p)] = np.zeros(n * d)
    tap(close(ref.forward(zb, toks), full), "zero q/k/v bias == no bias")
    zb.w["model.layers.0.self_attn.v_proj.bias"] = np.ones(2 * d)
    tap(not close(ref.forward(zb, toks), full, 1e-3), "nonzero bias changes logits")

    print("1..%d" % n_test)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
