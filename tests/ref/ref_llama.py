"""ref_llama.py - an independent numpy reference of the Hugging Face Llama forward pass
(LlamaForCausalLM / Qwen2ForCausalLM) with optional PEFT LoRA adapters, in float64.

Written from the published formulas (transformers' modeling_llama.py semantics and PEFT's
tuners/lora/layer.py::Linear.forward), not from adapterd's C code:

  h0 = embed[tokens]
  per layer:  a = rmsnorm(h, input_layernorm)
              q,k,v = a Wq^T (+bq), a Wk^T (+bk), a Wv^T (+bv)     (each + LoRA delta)
              q,k = rope(q), rope(k)   (rotate_half convention, cos/sin of cat(f, f))
              o = softmax(q k^T / sqrt(d) + causal) v, kv head of query head h = h // n_rep
              h = h + o Wo^T
              m = rmsnorm(h, post_attention_layernorm)
              h = h + down(silu(gate(m)) * up(m))
  logits = rmsnorm(h, norm) lm_head^T     (lm_head = embed when tied)
  rmsnorm(x, w) = w * x / sqrt(mean(x^2) + eps)
  LoRA: y = x W^T + b + s * (x A^T) B^T, s = alpha/r or alpha/sqrt(r) (use_rslora), times a
  runtime scale.

Adapter compositions (ADAPTER-MATH 7.2), from PEFT's add_weighted_adapter semantics:
  cat (exact weighted sum):  delta_y = sum_i w_i s_i (x A_i^T) B_i^T, computed term by term
      (compose_cat), or as one stacked LoRA A = [w_i s_i A_i], B = [B_i], scale 1
      (compose_cat_stacked; the two must agree, see test_batch_mixed.py);
  linear (same rank):  A = sum_i sign(w_i s_i) sqrt|w_i s_i| A_i,  B = sum_i sqrt|w_i s_i| B_i,
      scale 1, per module over the terms that target it (mix_linear) - NOT sum_i w_i dW_i.
A "lora" passed to forward() maps (layer, module) to one (A, B, s) or a list of them (summed).
"""

import json
import math
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import hf_fixtures  # noqa: E402  (read_safetensors, module tables)

MODULES = hf_fixtures.MODULES
PARENT = hf_fixtures.PARENT


class Model:
    def __init__(self, cfg, w):
        self.cfg = cfg
        self.w = w
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // self.n_heads)
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.theta = float(cfg.get("rope_theta", 10000.0))
        self.tied = bool(cfg.get("tie_word_embeddings", False))


def load_weights(dir):
    """All tensors of a model folder as float64 (single file or sharded index)."""
    index = os.path.join(dir, "model.safetensors.index.json")
    files = []
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w = {}
    for fn in files:
        t, _ = hf_fixtures.read_safetensors(os.path.join(dir, fn))
        for k, v in t.items():
            w[k] = v.astype(np.float64)
    return w


def load_model(dir):
    with open(os.path.join(dir, "config.json")) as f:
        cfg = json.load(f)
    return Model(cfg, load_weights(dir))


def _pattern_value(patterns, key, default):
    # PEFT get_pattern_key: first pattern k (JSON order) with re.match(rf"(.*\.)?({k})$", key).
    for k, v in (patterns or {}).items():
        if re.match(r"(.*\.)?(%s)$" % k, key):
            return v
    return default


def load_lora(dir, scale=1.0):
    """-> {(layer, module): (A (r,in), B (out,r), s)} for a PEFT LoRA folder."""
    with open(os.path.join(dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "LORA":
        raise ValueError("not a LoRA adapter")
    t, _ = hf_fixtures.read_safetensors(os.path.join(dir, "adapter_model.safetensors"))
    key_re = re.compile(r"^(?:base_model\.model\.)?(model\.layers\.(\d+)\.(self_attn|mlp)\."
                        r"(\w+))\.lora_A\.weight$")
    out = {}
    for k, A in t.items():
        m = key_re.match(k)
        if not m:
            continue
        path, layer, mod = m.group(1), int(m.group(2)), m.group(4)
        B = t[k.replace("lora_A", "lora_B")]
        r = _pattern_value(cfg.get("rank_pattern"), path, cfg["r"])
        alpha = _pattern_value(cfg.get("alpha_pattern"), path, cfg["lora_alpha"])
        s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[(layer, mod)] = (A.astype(np.float64), B.astype(np.float64), s * scale)
    return out


def compose_cat(terms):
    """terms: [(lora, w)] with lora from load_lora. -> a lora whose modules carry one
    (A_i, B_i, w_i s_i) per term targeting them: delta = sum_i w_i s_i (x A_i^T) B_i^T."""
    out = {}
    for lora, wt in terms:
        for key, (A, B, s) in lora.items():
            out.setdefault(key, []).append((A, B, wt * s))
    return out


def compose_cat_stacked(terms):
    """The same composition as ONE LoRA per module: A_cat = [w_1 s_1 A_1; ...] (rows stacked),
    B_cat = [B_1 | ...] (columns concatenated), scale 1 (PEFT combination_type="cat")."""
    out = {}
    for key, parts in compose_cat(terms).items():
        A = np.concatenate([ws * A for A, _, ws in parts], axis=0)
        B = np.concatenate([B for _, B, _ in parts], axis=1)
        out[key] = (A, B, 1.0)
    return out


def mix_linear(terms):
    """PEFT add_weighted_adapter(combination_type="linear"): per module, over the terms that
    target it, A = sum sign(w s) sqrt|w s| A_i, B = sum sqrt|w s| B_i, scale 1. Ranks must
    agree (ValueError otherwise)."""
    out = {}
    for lora, wt in terms:
        for key, (A, B, s) in lora.items():
            ws = wt * s
            a, b = math.copysign(math.sqrt(abs(ws)), ws) * A, math.sqrt(abs(ws)) * B
            if key in out:
                if out[key][0].shape != a.shape:
                    raise ValueError("linear mix needs equal ranks (module %r)" % (key,))
                a, b = out[key][0] + a, out[key][1] + b
            out[key] = (a, b, 1.0)
    return out


def rmsnorm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def silu(x):
    return x / (1.0 + np.exp(-x))


def rope_inv_freq(model):
    d = model.head_dim
    inv = 1.0 / (model.theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    rs = model.cfg.get("rope_scaling")
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / float(rs["factor"])
    if kind == "llama3":
        factor = float(rs["factor"])
        lo, hi = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        low_wl, high_wl = old / lo, old / hi
        wl = 2.0 * math.pi / inv
        inv_l = np.where(wl > low_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1.0 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        return np.where(medium, smoothed, inv_l)
    raise ValueError("rope_scaling %r not modelled" % kind)


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rope(x, pos, inv_freq):
    """x: (T, heads, d); pos: (T,)."""
    f = np.outer(pos.astype(np.float64), inv_freq)          # (T, d/2)
    emb = np.concatenate([f, f], axis=-1)                    # (T, d)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    return x * cos + rotate_half(x) * sin


def linear(model, lora, layer, mod, x):
    p = "model.layers.%d.%s.%s." % (layer, PARENT[mod], mod)
    y = x @ model.w[p + "weight"].T
    if p + "bias" in model.w:
        y = y + model.w[p + "bias"]
    if lora and (layer, mod) in lora:
        terms = lora[(layer, mod)]
        for A, B, s in (terms if isinstance(terms, list) else [terms]):
            y = y + s * ((x @ A.T) @ B.T)
    return y


def forward(model, tokens, lora=None):
    """logits (T, vocab) float64 for every position of one sequence starting at position 0."""
    w, T = model.w, len(tokens)
    H, KV, d = model.n_heads, model.n_kv, model.head_dim
    n_rep = H // KV
    pos = np.arange(T)
    inv_freq = rope_inv_freq(model)
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    h = w["model.embed_tokens.weight"][np.asarray(tokens)]
    for i in range(model.n_layers):
        p = "model.layers.%d." % i
        a = rmsnorm(h, w[p + "input_layernorm.weight"], model.eps)
        q = linear(model, lora, i, "q_proj", a).reshape(T, H, d)
        k = linear(model, lora, i, "k_proj", a).reshape(T, KV, d)
        v = linear(model, lora, i, "v_proj", a).reshape(T, KV, d)
        q, k = apply_rope(q, pos, inv_freq), apply_rope(k, pos, inv_freq)
        o = np.empty((T, H, d))
        for hh in range(H):
            kv = hh // n_rep
            sc = q[:, hh, :] @ k[:, kv, :].T / math.sqrt(d) + mask
            sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
            sc /= sc.sum(axis=-1, keepdims=True)
            o[:, hh, :] = sc @ v[:, kv, :]
        h = h + linear(model, lora, i, "o_proj", o.reshape(T, H * d))
        m = rmsnorm(h, w[p + "post_attention_layernorm.weight"], model.eps)
        g = silu(linear(model, lora, i, "gate_proj", m)) * linear(model, lora, i, "up_proj", m)
        h = h + linear(model, lora, i, "down_proj", g)
    h = rmsnorm(h, w["model.norm.weight"], model.eps)
    head = w["model.embed_tokens.weight"] if model.tied else w["lm_head.weight"]
    return h @ head.T


if __name__ == "__main__":
    # ref_llama.py MODEL_DIR [LORA_DIR] ids,... : prints the argmax token of every position.
    m = load_model(sys.argv[1])
    lo = load_lora(sys.argv[2]) if len(sys.argv) > 3 else None
    ids = [int(t) for t in sys.argv[-1].split(",")]
    print(" ".join(str(int(t)) for t in forward(m, ids, lo).argmax(axis=-1)))
