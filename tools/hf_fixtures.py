"""hf_fixtures.py - synthetic Hugging Face Llama models and PEFT LoRA adapters (numpy only).

Used by the numpy reference tests (tests/ref/) and by tools/make_default_data.py. Everything
written here follows the on-disk formats that transformers and PEFT produce, so adapterd's
loaders see exactly what a real checkpoint looks like:

  - safetensors: u64 little-endian header length N, N bytes of JSON (padded with spaces to a
    multiple of 8, as the reference writer does), then the contiguous little-endian data block.
  - model folders: config.json (HF field names), generation_config.json, model.safetensors or
    model-0000i-of-0000n.safetensors shards plus model.safetensors.index.json.
  - adapter folders: adapter_config.json as PEFT's save_pretrained writes it for LoRA and
    adapter_model.safetensors with keys base_model.model.model.layers.{i}.{self_attn|mlp}.
    {mod}.lora_A.weight (r, in) and .lora_B.weight (out, r).

Weights are seeded Gaussians scaled so that activations stay O(1) through a few layers and the
logits have a spread of a few units (argmax is not a coin toss). PEFT initialises lora_B to zero;
ours is nonzero on purpose so an adapter visibly changes the output.

Also exports read_safetensors() (used by the reference model) and the dtype converters.
"""

import json
import os

import numpy as np

# PEFT module names -> (parent, shape function (out, in) of a config)
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
          "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}

DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2}
TORCH_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


# ---------------------------------------------------------------------------------------------
# dtype conversion

def f32_to_bf16_bits(a):
    """float32 array -> uint16 bfloat16 bits, round to nearest even (NaN stays a quiet NaN)."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(a, dtype=np.float32))
    rounded = np.where(nan, (u >> 16) | 0x40, rounded)
    return rounded.astype("<u2")


def bf16_bits_to_f32(bits):
    """uint16 bfloat16 bits -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint32) << 16).astype("<u4").view("<f4")


def encode(a, dtype):
    """float array -> little-endian bytes in safetensors dtype 'F32' | 'F16' | 'BF16'."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "F32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(a, dtype="<f2").tobytes()
    if dtype == "BF16":
        return f32_to_bf16_bits(a).tobytes()
    raise ValueError("unsupported dtype %r" % dtype)


def quantize(a, dtype):
    """The float32 values a tensor has after a round trip through dtype."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.copy()
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        return bf16_bits_to_f32(f32_to_bf16_bits(a)).reshape(a.shape)
    raise ValueError("unsupported dtype %r" % dtype)


# ---------------------------------------------------------------------------------------------
# safetensors

def safetensors_bytes(tensors, dtype="F32", metadata=None):
    """tensors: list of (name, array) or dict; every tensor stored as dtype (or a per-tensor
    (name, array, dtype) triple). Returns the whole file image as bytes."""
    items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    header = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for item in items:
        name, arr = item[0], item[1]
        dt = item[2] if len(item) > 2 else dtype
        data = encode(arr, dt)
        header[name] = {"dtype": dt, "shape": [int(d) for d in np.shape(arr)],
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hdr = json.dumps(header, separators=(",", ":")).encode()
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    return len(hdr).to_bytes(8, "little") + hdr + b"".join(blobs)


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    with open(path, "wb") as f:
        f.write(safetensors_bytes(tensors, dtype, metadata))


def read_safetensors(path):
    """-> (dict name -> float32 ndarray, metadata dict). F32/F16/BF16 only."""
    with open(path, "rb") as f:
        buf = f.read()
    n = int.from_bytes(buf[:8], "little")
    header = json.loads(buf[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        raw = buf[base + b:base + e]
        shape = tuple(info["shape"])
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            a = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            raise ValueError("%s: tensor %s: unsupported dtype %s" % (path, name, dt))
        out[name] = a.reshape(shape).astype(np.float32)
    return out, meta


# ---------------------------------------------------------------------------------------------
# models

LLAMA_DEFAULTS = {
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def full_config(cfg, dtype="F32", tie=False, qkv_bias=False):
    """The config.json dict for cfg (HF names; missing fields from LLAMA_DEFAULTS)."""
    c = dict(LLAMA_DEFAULTS)
    c.update(cfg or {})
    if qkv_bias:
        c["architectures"] = ["Qwen2ForCausalLM"]
        c["model_type"] = "qwen2"
        c.setdefault("use_sliding_window", False)
    else:
        c.setdefault("architectures", ["LlamaForCausalLM"])
        c.setdefault("model_type", "llama")
        c.setdefault("attention_bias", False)
    c["tie_word_embeddings"] = bool(tie)
    c["torch_dtype"] = TORCH_DTYPE[dtype]
    c.setdefault("hidden_act", "silu")
    c.setdefault("initializer_range", 0.02)
    c.setdefault("transformers_version", "4.44.0")
    return c


def head_dim(c):
    return int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])


def module_shape(c, mod):
    """(out, in) of a PEFT target module in a model of config c."""
    d, hid, hd = c["hidden_size"], c["intermediate_size"], head_dim(c)
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    return {"q_proj": (nh * hd, d), "k_proj": (nkv * hd, d), "v_proj": (nkv * hd, d),
            "o_proj": (d, nh * hd), "gate_proj": (hid, d), "up_proj": (hid, d),
            "down_proj": (d, hid)}[mod]


def llama_tensors(c, seed, qkv_bias=False):
    """Ordered list of (HF name, float32 array) for config c."""
    rng = np.random.default_rng(seed)
    d, V = c["hidden_size"], c["vocab_size"]
    tie = c.get("tie_word_embeddings", False)

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_w():
        return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    # Logits = rmsnorm(h) . lm_head rows: std 2/sqrt(d) gives logits with std ~2.
    head_std = 2.0 / np.sqrt(d)
    out = [("model.embed_tokens.weight", normal((V, d), head_std if tie else 1.0))]
    gains = {"q_proj": 1.0, "k_proj": 1.0, "v_proj": 0.7, "o_proj": 0.7,
             "gate_proj": 1.0, "up_proj": 1.0, "down_proj": 0.7}
    for i in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % i
        out.append((p + "input_layernorm.weight", norm_w()))
        for mod in MODULES:
            n_out, n_in = module_shape(c, mod)
            name = p + PARENT[mod] + "." + mod
            out.append((name + ".weight", normal((n_out, n_in), gains[mod] / np.sqrt(n_in))))
            if qkv_bias and mod in ("q_proj", "k_proj", "v_proj"):
                out.append((name + ".bias", normal((n_out,), 0.2)))
        out.append((p + "post_attention_layernorm.weight", norm_w()))
    out.append(("model.norm.weight", norm_w()))
    if not tie:
        out.append(("lm_head.weight", normal((V, d), head_std)))
    return out


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def make_llama(dir, cfg=None, seed=0, dtype="F32", tie=False, qkv_bias=False, shards=1,
               extra_config=None):
    """Write a synthetic HF Llama (or Qwen2-style with qkv_bias) model folder.
    Returns the config dict that was written."""
    os.makedirs(dir, exist_ok=True)
    c = full_config(cfg, dtype, tie, qkv_bias)
    if extra_config:
        c.update(extra_config)
    _write_json(os.path.join(dir, "config.json"), c)
    gen = {"_from_model_config": True, "bos_token_id": c["bos_token_id"],
           "eos_token_id": c["eos_token_id"], "transformers_version": c["transformers_version"]}
    _write_json(os.path.join(dir, "generation_config.json"), gen)
    tensors = llama_tensors(c, seed, qkv_bias)
    meta = {"format": "pt"}
    if shards <= 1:
        write_safetensors(os.path.join(dir, "model.safetensors"), tensors, dtype, meta)
        return c
    # Contiguous slices of the tensor list, like transformers' max_shard_size splitting.
    bounds = np.linspace(0, len(tensors), shards + 1).astype(int)
    weight_map, total = {}, 0
    for s in range(shards):
        fname = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        part = tensors[bounds[s]:bounds[s + 1]]
        write_safetensors(os.path.join(dir, fname), part, dtype, meta)
        for name, arr in part:
            weight_map[name] = fname
            total += arr.size * DTYPE_SIZE[dtype]
    _write_json(os.path.join(dir, "model.safetensors.index.json"),
                {"metadata": {"total_size": total}, "weight_map": weight_map})
    return c


# ---------------------------------------------------------------------------------------------
# LoRA adapters

def lora_scale(r, alpha, rslora):
    return alpha / np.sqrt(r) if rslora else alpha / r


def make_lora(dir, base_cfg, seed, r, alpha, targets, layers=None, rslora=False, dtype="F32",
              key_prefix="base_model.model.", strength=1.0, base_name="synthetic-llama"):
    """Write a PEFT LoRA adapter folder for a model of config base_cfg (as returned by
    make_llama). targets: PEFT module names ("q_proj", ...); layers: list of layer indices
    (layers_to_transform) or None for all. strength ~ size of the delta relative to the base
    projection output (1.0 = comparable, enough to flip argmax tokens).
    Returns {(layer, module): (A, B, s)} with A, B as stored (after dtype rounding)."""
    os.makedirs(dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    s = lora_scale(r, alpha, rslora)
    n_layers = base_cfg["num_hidden_layers"]
    use_layers = list(range(n_layers)) if layers is None else sorted(layers)
    tensors, ref = [], {}
    for i in use_layers:
        for mod in MODULES:
            if mod not in targets:
                continue
            n_out, n_in = module_shape(base_cfg, mod)
            # x is RMS-normalised (or an activation of O(1)): A x ~ O(1) per rank component,
            # then s * B (A x) ~ 0.5 * strength per output element.
            A = rng.standard_normal((r, n_in)) / np.sqrt(n_in)
            B = rng.standard_normal((n_out, r)) * (0.5 * strength / (s * np.sqrt(r)))
            key = "%smodel.layers.%d.%s.%s" % (key_prefix, i, PARENT[mod], mod)
            tensors.append((key + ".lora_A.weight", A.astype(np.float32)))
            tensors.append((key + ".lora_B.weight", B.astype(np.float32)))
            ref[(i, mod)] = (quantize(A, dtype), quantize(B, dtype), s)
    cfg = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base_name,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None if layers is None else use_layers,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_dropout": 0.05,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": [m for m in MODULES if m in targets],
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": bool(rslora),
    }
    _write_json(os.path.join(dir, "adapter_config.json"), cfg)
    write_safetensors(os.path.join(dir, "adapter_model.safetensors"), tensors, dtype,
                      {"format": "pt"})
    return ref
