"""ref_routing.py - independent numpy references of learned routing over LoRA experts
(PHATGOOSE, Arrow, X-LoRA), in float64, written from /work/shared/ADAPTER-MATH.md sections 2,
3.1, 3.3 and 7.3 (not from adapterd's C code):

  PHATGOOSE (3.1): per token and module, over the experts that target the module,
      score_e = LN(x) . LN(g_e) / sqrt(d_in) / T     LN: (v - mean) / sqrt(var_biased + 1e-5)
      keep the top_k scores (ties -> lower expert index), lambda = softmax over the kept.
  Arrow (3.3): v_e = top right singular vector of B_e A_e (np.linalg.svd, sign-agnostic),
      score_e = |x . v_e|, keep top_k, lambda = softmax(kept / T).
  X-LoRA (2.2-2.4): classifier Linear [-> ReLU -> Linear]... over h, the final-RMSNorm hidden
      state of a scaling pass; softmax(logits / T) over experts if enable_softmax; broadcast
      to every slot unless layerwise (then reshape (n_slots, n_experts)); per slot top_k
      (others 0, no renormalisation), softmax over the nonzero entries if enable_softmax_topk.
      Real pass: lambda at module (layer, m) = g * S[slot(layer, m)], slots numbered over the
      modules some expert targets, layer by layer in q,k,v,o,gate,up,down order.
      Scaling pass (2.3): every X-LoRA layer gets the dummy scalings, scaling_pass_value for
      every expert, and treats them like real ones: PEFT's XLoraLayer.forward runs
      get_maybe_topk_scalings on whatever scalings it is given (so top_k keeps the k lowest
      indices of the all-equal row under our tie rule, softmax_topk makes them 1/k) and
      multiplies by g. With scaling_pass_value 0 this is the base model exactly.
  Routed LoRA delta (7.3): delta_y[t] = sum_e lambda[t, e] * s_e * (x_t A_e^T) B_e^T.

The routed forward (forward_routed) is ref_llama's Llama forward with a per-module delta hook;
forward_hooked with a plain LoRA hook must equal ref_llama.forward (test_routing.py checks).
Routers are read from the on-disk formats of core/router.h (load_router_dir).
"""

import json
import math
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import hf_fixtures  # noqa: E402
import ref_llama as ref  # noqa: E402

MODULES = hf_fixtures.MODULES
PARENT = hf_fixtures.PARENT
LN_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# building blocks

def ln_noaffine(v, eps=LN_EPS):
    """LayerNorm without affine over the last axis, biased variance."""
    v = np.asarray(v, dtype=np.float64)
    mu = v.mean(axis=-1, keepdims=True)
    var = ((v - mu) ** 2).mean(axis=-1, keepdims=True)
    return (v - mu) / np.sqrt(var + eps)


def topk_mask(scores, k, allowed=None):
    """(N, E) bool: per row the k largest entries among `allowed` (bool (E,) or None = all);
    ties go to the lower index (stable sort of -score). k <= 0 or k >= #allowed keeps all
    allowed entries."""
    scores = np.asarray(scores, dtype=np.float64)
    N, E = scores.shape
    allowed = np.ones(E, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
    mask = np.zeros((N, E), dtype=bool)
    idx = np.flatnonzero(allowed)
    if idx.size == 0:
        return mask
    kk = idx.size if k <= 0 or k >= idx.size else k
    for i in range(N):
        order = idx[np.argsort(-scores[i, idx], kind="stable")]
        mask[i, order[:kk]] = True
    return mask


def softmax_masked(scores, mask):
    """softmax over the masked entries of each row, exactly 0 elsewhere."""
    s = np.where(mask, scores, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.where(mask, np.exp(s - mx), 0.0)
    den = e.sum(axis=-1, keepdims=True)
    return np.where(den > 0, e / np.where(den > 0, den, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------
# PHATGOOSE and Arrow weights for one module

def phatgoose_weights(x, gates, cand, top_k, temperature):
    """x (N, d_in), gates (E, d_in), cand bool (E,) -> lambda (N, E)."""
    x = np.asarray(x, dtype=np.float64)
    d_in = x.shape[1]
    score = ln_noaffine(x) @ ln_noaffine(gates).T / math.sqrt(d_in) / temperature
    mask = topk_mask(score, top_k, cand)
    return softmax_masked(score, mask)


def arrow_prototype(A, B):
    """Top right singular vector of B A (unit, sign arbitrary)."""
    _, _, vt = np.linalg.svd(np.asarray(B, np.float64) @ np.asarray(A, np.float64))
    return vt[0]


def arrow_weights(x, protos, cand, top_k, temperature):
    """x (N, d_in), protos (E, d_in) (rows of non-candidates ignored) -> lambda (N, E)."""
    score = np.abs(np.asarray(x, dtype=np.float64) @ protos.T)
    mask = topk_mask(score, top_k, cand)
    return softmax_masked(score / temperature, mask)


# ---------------------------------------------------------------------------------------------
# X-LoRA

def xlora_slots(experts, n_layers):
    """{(layer, module): slot} over modules targeted by at least one expert (2.4)."""
    slots = {}
    for i in range(n_layers):
        for m in MODULES:
            if any((i, m) in e for e in experts):
                slots[(i, m)] = len(slots)
    return slots


def xlora_topk(S, k, softmax_topk):
    """get_maybe_topk_scalings per (token, slot) row of S (..., E): keep the k largest (ties to
    the lower index; k <= 0: all), then softmax over the nonzero entries if softmax_topk."""
    shape = S.shape
    flat = np.asarray(S, dtype=np.float64).reshape(-1, shape[-1])
    if k > 0:
        flat = np.where(topk_mask(flat, k), flat, 0.0)
    if softmax_topk:
        flat = softmax_masked(flat, flat != 0)
    return flat.reshape(shape)


def xlora_dummy(xl, top_k=0):
    """The scaling pass's lambda per expert (E,), g applied (see the module docstring)."""
    k = top_k if top_k > 0 else xl["top_k"]
    d = np.full((1, xl["n_experts"]), xl["scaling_pass_value"])
    return xl["g"] * xlora_topk(d, k, xl["softmax_topk"])[0]


def xlora_classify(xl, h, top_k=0, temperature=0.0):
    """h (N, dim) -> S (N, n_slots, n_experts), g NOT applied. top_k / temperature: per-call
    overrides (0 = the config's)."""
    z = np.asarray(h, dtype=np.float64)
    for j, (W, b) in enumerate(xl["layers"]):
        if j > 0 and xl["relu"]:
            z = np.maximum(z, 0.0)
        z = z @ W.T + (b if b is not None else 0.0)
    N, E, L = z.shape[0], xl["n_experts"], xl["n_slots"]
    T = temperature if temperature > 0 else xl["temperature"]
    if xl["layerwise"]:
        S = z.reshape(N, L, E)
    else:
        S = np.broadcast_to(z[:, None, :], (N, L, E)).copy()
    if xl["softmax"]:
        S = S / T
        S = np.exp(S - S.max(axis=-1, keepdims=True))
        S = S / S.sum(axis=-1, keepdims=True)
    return xlora_topk(S, top_k if top_k > 0 else xl["top_k"], xl["softmax_topk"])


def _linear_keys(t, pattern):
    """{index: (W, b)} of keys matching pattern with groups (index, weight|bias)."""
    found = {}
    for k, v in t.items():
        m = re.fullmatch(pattern, k)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(v, np.float64)
    return found


def load_xlora(dir, n_layers, experts):
    """X-LoRA classifier + config of either format. experts: loaded LoRAs in config order."""
    peft = os.path.exists(os.path.join(dir, "adapter_config.json"))
    cfg_name = "adapter_config.json" if peft else "xlora_config.json"
    with open(os.path.join(dir, cfg_name)) as f:
        cfg = json.load(f)
    if peft:
        t, _ = hf_fixtures.read_safetensors(os.path.join(dir, "adapter_model.safetensors"))
        found = _linear_keys(t, r".*internal_xlora_classifier\.layers\.(\d+)\.(weight|bias)")
        lin = [found[i] for i in sorted(found)]
        relu = True
    else:
        t, _ = hf_fixtures.read_safetensors(os.path.join(dir, "xlora_classifier.safetensors"))
        found = _linear_keys(t, r"inner\.(\d+)\.(weight|bias)")
        lin = [found[i] for i in sorted(found)]
        last = {}
        for part in ("weight", "bias"):
            if "last." + part in t:
                last[part] = np.asarray(t["last." + part], np.float64)
        lin.append(last)
        relu = bool(cfg.get("enable_relu_and_dropout", True))
    slots = xlora_slots(experts, n_layers)
    top_k = cfg.get("top_k_lora")
    return {
        "layers": [(d["weight"], d.get("bias")) for d in lin],
        "relu": relu,
        "layerwise": bool(cfg.get("layerwise_scalings", False)),
        "softmax": bool(cfg.get("enable_softmax", True)),
        "softmax_topk": bool(cfg.get("enable_softmax_topk", False)),
        "temperature": float(cfg.get("softmax_temperature", 1.0)),
        "top_k": int(top_k) if top_k else 0,
        "scaling_pass_value": float(cfg.get("scaling_pass_value", 0.0)),
        "g": float(cfg.get("global_scaling_weight", 1.0)),
        "n_experts": len(experts),
        "slots": slots,
        "n_slots": len(slots),
    }


# ---------------------------------------------------------------------------------------------
# routers from disk

def expert_names(dir):
    """(kind, [names]) from a router folder's config."""
    p = os.path.join(dir, "adapter_config.json")
    if os.path.exists(p):
        cfg = json.load(open(p))
        return "xlora", list(cfg["adapters"].keys())
    p = os.path.join(dir, "xlora_config.json")
    if os.path.exists(p):
        a = json.load(open(p))["adapters"]
        return "xlora", list(a.keys()) if isinstance(a, dict) else list(a)
    cfg = json.load(open(os.path.join(dir, "router_config.json")))
    return cfg["router_type"], list(cfg["experts"])


GATE_RE = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\."
                     r"(\w+)\.phatgoose_gate$")


def load_router_dir(dir, n_layers):
    """-> router dict: kind, names, experts (ref_llama.load_lora dicts), top_k, temperature and
    per kind: gates {(layer, mod): (E, d_in)} | protos {(layer, mod): (E, d_in)} | xlora."""
    kind, names = expert_names(dir)
    experts = [ref.load_lora(os.path.join(dir, n)) for n in names]
    r = {"kind": kind, "names": names, "experts": experts, "n_experts": len(names)}
    if kind == "xlora":
        r["xlora"] = load_xlora(dir, n_layers, experts)
        r["top_k"] = r["xlora"]["top_k"]
        r["temperature"] = r["xlora"]["temperature"]
        return r
    cfg = json.load(open(os.path.join(dir, "router_config.json")))
    r["top_k"] = int(cfg.get("top_k", 2 if kind == "phatgoose" else 3))
    r["temperature"] = float(cfg.get("temperature", 1.0))
    if kind == "phatgoose":
        t, _ = hf_fixtures.read_safetensors(os.path.join(dir, "router_gates.safetensors"))
        r["gates"] = {}
        for k, v in t.items():
            m = GATE_RE.match(k)
            r["gates"][(int(m.group(1)), m.group(3))] = np.asarray(v, np.float64)
    else:
        r["protos"] = {}
        for j, e in enumerate(experts):
            for key, (A, B, _) in e.items():
                rows = r["protos"].setdefault(key, np.zeros((len(names), A.shape[1])))
                rows[j] = arrow_prototype(A, B)
    return r


def candidates(r, layer, mod):
    return np.array([(layer, mod) in e for e in r["experts"]], dtype=bool)


def route(r, layer, mod, x, top_k=0, temperature=0.0):
    """PHATGOOSE / Arrow lambda (N, E) for module (layer, mod) from its input rows x."""
    k = top_k if top_k > 0 else r["top_k"]
    T = temperature if temperature > 0 else r["temperature"]
    cand = candidates(r, layer, mod)
    x = np.asarray(x, dtype=np.float64)
    if not cand.any():
        return np.zeros((x.shape[0], r["n_experts"]))
    if r["kind"] == "phatgoose":
        return phatgoose_weights(x, r["gates"][(layer, mod)], cand, k, T)
    return arrow_weights(x, r["protos"][(layer, mod)], cand, k, T)


# ---------------------------------------------------------------------------------------------
# routed forward

def forward_hooked(model, tokens, delta=None):
    """ref_llama.forward with delta(layer, mod, x) -> (T, out) or None added to every linear.
    -> (logits (T, vocab), h (T, dim) after the final RMSNorm)."""
    w, T = model.w, len(tokens)
    H, KV, d = model.n_heads, model.n_kv, model.head_dim
    n_rep = H // KV
    pos = np.arange(T)
    inv_freq = ref.rope_inv_freq(model)
    mask = np.triu(np.full((T, T), -np.inf), k=1)

    def lin(i, mod, x):
        y = ref.linear(model, None, i, mod, x)
        dy = delta(i, mod, x) if delta else None
        return y if dy is None else y + dy

    h = w["model.embed_tokens.weight"][np.asarray(tokens)]
    for i in range(model.n_layers):
        p = "model.layers.%d." % i
        a = ref.rmsnorm(h, w[p + "input_layernorm.weight"], model.eps)
        q = lin(i, "q_proj", a).reshape(T, H, d)
        k = lin(i, "k_proj", a).reshape(T, KV, d)
        v = lin(i, "v_proj", a).reshape(T, KV, d)
        q, k = ref.apply_rope(q, pos, inv_freq), ref.apply_rope(k, pos, inv_freq)
        o = np.empty((T, H, d))
        for hh in range(H):
            kv = hh // n_rep
            sc = q[:, hh, :] @ k[:, kv, :].T / math.sqrt(d) + mask
            sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
            sc /= sc.sum(axis=-1, keepdims=True)
            o[:, hh, :] = sc @ v[:, kv, :]
        h = h + lin(i, "o_proj", o.reshape(T, H * d))
        m = ref.rmsnorm(h, w[p + "post_attention_layernorm.weight"], model.eps)
        g = ref.silu(lin(i, "gate_proj", m)) * lin(i, "up_proj", m)
        h = h + lin(i, "down_proj", g)
    h = ref.rmsnorm(h, w["model.norm.weight"], model.eps)
    head = w["model.embed_tokens.weight"] if model.tied else w["lm_head.weight"]
    return h @ head.T, h


def expert_delta(experts, layer, mod, x, lam):
    """sum_e lam[:, e] * s_e * (x A_e^T) B_e^T over the experts targeting (layer, mod), or
    None when none does."""
    out = None
    for e, lo in enumerate(experts):
        if (layer, mod) not in lo:
            continue
        A, B, s = lo[(layer, mod)]
        d = (lam[:, e:e + 1] * s) * ((x @ A.T) @ B.T)
        out = d if out is None else out + d
    return out


def lora_hook(lora):
    """A forward_hooked delta for a plain ref_llama LoRA dict (self-check helper)."""
    def delta(layer, mod, x):
        if (layer, mod) not in lora:
            return None
        terms = lora[(layer, mod)]
        return sum(s * ((x @ A.T) @ B.T) for A, B, s in (terms if isinstance(terms, list)
                                                         else [terms]))
    return delta


def forward_routed(model, tokens, r, top_k=0, temperature=0.0, stats=None):
    """Logits (T, vocab) of one sequence routed by r. stats (optional dict) receives
    route_sum (n_layers, E) and route_n (n_layers,) as core_fwd_item_t defines them
    (lambda summed over tokens and routed modules; X-LoRA lambda includes g) and, for
    X-LoRA, S and h of the scaling pass."""
    E, L = r["n_experts"], model.n_layers
    rsum, rn = np.zeros((L, E)), np.zeros(L, dtype=np.int64)
    if r["kind"] == "xlora":
        xl = r["xlora"]
        g, dummy = xl["g"], xlora_dummy(xl, top_k)
        if np.any(dummy != 0):
            lam0 = lambda n: np.tile(dummy, (n, 1))  # noqa: E731
            _, h = forward_hooked(model, tokens, lambda i, m, x: expert_delta(
                r["experts"], i, m, x, lam0(x.shape[0])) if (i, m) in xl["slots"] else None)
        else:
            _, h = forward_hooked(model, tokens)
        S = xlora_classify(xl, h, top_k, temperature)

        def delta(i, m, x):
            if (i, m) not in xl["slots"]:
                return None
            lam = g * S[:, xl["slots"][(i, m)], :]
            rsum[i] += lam.sum(axis=0)
            rn[i] += x.shape[0]
            return expert_delta(r["experts"], i, m, x, lam)
        if stats is not None:
            stats["S"], stats["h"] = S, h
    else:
        def delta(i, m, x):
            if not candidates(r, i, m).any():
                return None
            lam = route(r, i, m, x, top_k, temperature)
            rsum[i] += lam.sum(axis=0)
            rn[i] += x.shape[0]
            return expert_delta(r["experts"], i, m, x, lam)
    logits, _ = forward_hooked(model, tokens, delta)
    if stats is not None:
        stats["route_sum"], stats["route_n"] = rsum, rn
    return logits
