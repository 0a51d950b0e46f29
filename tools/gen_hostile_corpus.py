"""gen_hostile_corpus.py OUT_DIR [--model DIR] - the hostile adapter files of
shared/RELIABILITY.md section 2.2 (F1-F11), written as PEFT folders.

Each case is OUT_DIR/<name>/ with adapter_config.json and adapter_model.safetensors, built
for the base model in --model (default data/model: read from its config.json), so that a
case fails for exactly one reason. OUT_DIR/manifest.json lists every case:

    {"name": "f4_gap", "test": "F4", "what": "...", "expect": 422, "reason": "invalid_offset"}

"expect" is the upload status (201 = accepted) and "reason" the `error.reason` a refusal
carries (docs/API.md "Hostile files"). The files are built byte by byte here (no
safetensors library), because most of them are malformed on purpose. Deterministic: the
same model gives the same bytes. Run with /usr/bin/python3 (numpy).
"""

import json
import os
import shutil
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
          "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
R = 4
ALPHA = 8


def module_shape(c, mod):
    """(out_features, in_features) of a base linear layer."""
    dim, hid = c["hidden_size"], c["intermediate_size"]
    hd = c.get("head_dim") or dim // c["num_attention_heads"]
    kv = c.get("num_key_value_heads", c["num_attention_heads"]) * hd
    return {"q_proj": (c["num_attention_heads"] * hd, dim), "k_proj": (kv, dim),
            "v_proj": (kv, dim), "o_proj": (dim, c["num_attention_heads"] * hd),
            "gate_proj": (hid, dim), "up_proj": (hid, dim), "down_proj": (dim, hid)}[mod]


def key(layer, mod, ab, prefix="base_model.model."):
    return "%smodel.layers.%d.%s.%s.lora_%s.weight" % (prefix, layer, PARENT[mod], mod, ab)


def config(**over):
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": R, "lora_alpha": ALPHA,
           "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False,
           "use_dora": False, "modules_to_save": None, "lora_dropout": 0.0,
           "base_model_name_or_path": "adapterd-tiny-llama"}
    for k, v in over.items():
        if v is DROP:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return json.dumps(cfg, indent=1).encode()


DROP = object()


# ---- safetensors bytes ----------------------------------------------------------------

def encode(a, dtype):
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.astype("<f4").tobytes()
    if dtype == "F16":
        return a.astype("<f2").tobytes()
    if dtype == "BF16":
        bits = a.view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
        return bits.astype("<u2").tobytes()
    if dtype == "I32":
        return np.round(a * 100).astype("<i4").tobytes()
    raise ValueError(dtype)


def entry_json(name, dtype, shape, offsets):
    """One header entry as text (so callers can write duplicates, floats, ...)."""
    return "%s:{\"dtype\":%s,\"shape\":%s,\"data_offsets\":%s}" % (
        json.dumps(name), json.dumps(dtype), shape if isinstance(shape, str) else
        json.dumps(list(shape)), offsets if isinstance(offsets, str) else json.dumps(list(offsets)))


def header_text(entries, metadata=None):
    """entries: list of (name, dtype, shape, offsets); shape/offsets lists or raw text."""
    parts = []
    if metadata is not None:
        parts.append("\"__metadata__\":" + (metadata if isinstance(metadata, str)
                                            else json.dumps(metadata)))
    parts += [entry_json(*e) for e in entries]
    return ("{" + ",".join(parts) + "}").encode()


def st_bytes(header, data=b"", n=None):
    """8-byte little-endian length (n, default len(header)), header, data."""
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def tensors_file(tensors, metadata=None, order=None, pad=b""):
    """tensors: list of (name, dtype, shape, bytes) laid out in list order; the header
    lists them in `order` (indexes) when given."""
    entries, data, at = [], [], 0
    for name, dtype, shape, b in tensors:
        entries.append((name, dtype, shape, [at, at + len(b)]))
        data.append(b)
        at += len(b)
    if order is not None:
        entries = [entries[i] for i in order]
    return st_bytes(header_text(entries, metadata) + pad, b"".join(data))


# ---- the valid base adapter and its variations ---------------------------------------

class Base:
    def __init__(self, cfg):
        self.cfg = cfg
        self.rng = np.random.default_rng(20240617)

    def pair(self, layer, mod, r=R, dtype="F32", prefix="base_model.model.", shape_a=None,
             shape_b=None):
        n_out, n_in = module_shape(self.cfg, mod)
        sa = shape_a or (r, n_in)
        sb = shape_b or (n_out, r)
        a = self.rng.standard_normal(sa) / np.sqrt(sa[-1])
        b = self.rng.standard_normal(sb) * 0.01
        return [(key(layer, mod, "A", prefix), dtype, list(sa), encode(a, dtype)),
                (key(layer, mod, "B", prefix), dtype, list(sb), encode(b, dtype))]

    def valid(self, dtype="F32"):
        """Layer 0 q_proj and v_proj at rank R: 4 tensors."""
        self.rng = np.random.default_rng(20240617)
        return self.pair(0, "q_proj", dtype=dtype) + self.pair(0, "v_proj", dtype=dtype)


def cases(base):
    """Yields (name, test, what, expect, reason, config bytes, weights bytes)."""
    cfg = config()
    good = base.valid()
    good_file = tensors_file(good)
    hdr_len = struct.unpack("<Q", good_file[:8])[0]
    good_header = good_file[8:8 + hdr_len]
    good_data = good_file[8 + hdr_len:]
    t0 = good[0]

    def one(name, dtype, shape, nbytes, offsets=None):
        return st_bytes(header_text([(name, dtype, shape, offsets or [0, nbytes])]),
                        b"\0" * nbytes)

    # F1: the 8-byte header length
    yield "f1_short", "F1", "file of 4 bytes", 422, "header_too_small", cfg, b"\x02\0\0\0"
    yield "f1_n_zero", "F1", "N = 0", 422, "invalid_header_start", cfg, st_bytes(b"", n=0)
    yield ("f1_n_max", "F1", "N = 2^64-1", 422, "header_too_large", cfg,
           st_bytes(b"{}", n=2 ** 64 - 1))
    yield ("f1_n_100m1", "F1", "N = 100,000,001", 422, "header_too_large", cfg,
           st_bytes(b"{}", n=100000001))
    yield ("f1_n_adapter_cap", "F1", "N = 16 MiB + 1 (the adapter cap, under the reference's)",
           422, "header_too_large", cfg, st_bytes(b"{}", n=(16 << 20) + 1))
    yield ("f1_n_past_file", "F1", "N > file size", 422, "invalid_header_length", cfg,
           st_bytes(good_header, good_data, n=len(good_header) + len(good_data) + 1))
    yield ("f1_zero_tensors", "F1", "N + 8 = file size, zero tensors (F10's empty rule)", 422,
           "no_tensors", cfg, st_bytes(b"{}"))
    # F2: the header text
    yield ("f2_array", "F2", "header is a JSON array", 422, "invalid_header_start", cfg,
           st_bytes(b"[" + good_header + b"]", good_data))
    yield ("f2_leading_ws", "F2", "leading whitespace (refused, as the reference)", 422,
           "invalid_header_start", cfg, st_bytes(b" " + good_header, good_data))
    yield ("f2_trailing_pad", "F2", "trailing 0x20/0x09 padding (accepted)", 201, None, cfg,
           tensors_file(good, pad=b"  \t  "))
    bad_utf8 = good_header.replace(b"lora_A", b"lora_\xff", 1)
    yield ("f2_bad_utf8", "F2", "invalid UTF-8 in a key", 422, "invalid_header", cfg,
           st_bytes(bad_utf8, good_data))
    yield ("f2_not_json", "F2", "not JSON", 422, "invalid_header", cfg,
           st_bytes(b"{nope" + b" " * 8))
    deep = b"{\"a\":" + b"[" * 3000 + b"]" * 3000 + b"}"
    yield "f2_depth", "F2", "nesting depth 3000", 422, "invalid_header", cfg, st_bytes(deep)
    # F3: duplicate keys
    dup = header_text([(t0[0], "F32", t0[2], [0, len(t0[3])]),
                       (t0[0], "F32", t0[2], [0, len(t0[3])])])
    yield ("f3_dup_same", "F3", "a tensor name twice, same dtype", 422, "duplicate_key", cfg,
           st_bytes(dup, t0[3]))
    poly = header_text([(t0[0], "U8", [4], [0, 4]), (t0[0], "F32", [1], [0, 4])])
    yield ("f3_dup_u8_f32", "F3", "the xz.aliyun file: U8[4] and F32[1] over 4 bytes", 422,
           "duplicate_key", cfg, st_bytes(poly, b"\0" * 4))
    dmeta = b"{\"__metadata__\":{\"a\":\"1\"},\"__metadata__\":{\"a\":\"2\"}," + good_header[1:]
    yield ("f3_dup_metadata", "F3", "__metadata__ twice", 422, "duplicate_key", cfg,
           st_bytes(dmeta, good_data))

    # F4: offsets (the good tensors, with one offset changed)
    def with_offsets(offs, data=good_data):
        ents = [(t[0], t[1], t[2], o) for t, o in zip(good, offs)]
        return st_bytes(header_text(ents), data)

    ends = np.cumsum([len(t[3]) for t in good]).tolist()
    spans = [[0 if i == 0 else ends[i - 1], ends[i]] for i in range(len(good))]
    gap = [list(s) for s in spans]
    for s in gap[1:]:
        s[0] += 4
        s[1] += 4
    yield ("f4_gap", "F4", "4-byte hole between two tensors", 422, "invalid_offset", cfg,
           with_offsets(gap, good_data + b"\0" * 4))
    over = [list(s) for s in spans]
    for s in over[1:]:
        s[0] -= 4
        s[1] -= 4
    yield ("f4_overlap", "F4", "tensor 1 overlaps tensor 0 by 4 bytes", 422, "invalid_offset",
           cfg, with_offsets(over, good_data[:-4]))
    yield ("f4_out_of_file", "F4", "last tensor runs past the file", 422, "invalid_offset", cfg,
           with_offsets(spans, good_data[:-len(good[-1][3])]))
    rev = [list(s) for s in spans]
    rev[0] = [rev[0][1], rev[0][0]]
    yield ("f4_end_lt_begin", "F4", "end < begin", 422, "invalid_offset", cfg,
           with_offsets(rev))
    yield ("f4_negative", "F4", "negative offset", 422, "invalid_offset", cfg,
           with_offsets(["[-4,%d]" % spans[0][1]] + spans[1:]))
    yield ("f4_float", "F4", "float offset", 422, "invalid_offset", cfg,
           with_offsets(["[0.0,%d]" % spans[0][1]] + spans[1:]))
    yield ("f4_huge", "F4", "offset > 2^63", 422, "invalid_offset", cfg,
           with_offsets(spans[:-1] + ["[%d,9223372036854775808]" % spans[-1][0]]))
    yield ("f4_unsorted", "F4", "listed out of offset order, contiguous (accepted)", 201, None,
           cfg, tensors_file(good, order=list(reversed(range(len(good))))))
    zero = good + [("zero.size", "F32", [0, 256], b"")]
    yield ("f4_zero_shared", "F4", "zero-size tensor sharing the next offset: the reader "
           "accepts it, the binder refuses its name", 422, "unbound_tensor", cfg,
           tensors_file(zero, order=[len(zero) - 1] + list(range(len(good)))))
    # F5: shape and dtype against bytes (one tensor each: the reader refuses first)
    yield ("f5_i32_short", "F5", "[2,2] I32 over 4 bytes", 422, "tensor_invalid_info", cfg,
           one(t0[0], "I32", [2, 2], 4))
    yield ("f5_wrap", "F5", "shape [4194305,4194305,211106198978564] F32 over 16 bytes", 422,
           "validation_overflow", cfg, one(t0[0], "F32", [4194305, 4194305, 211106198978564], 16))
    yield ("f5_2x_max", "F5", "shape [2, 2^63-1]", 422, "validation_overflow", cfg,
           one(t0[0], "U8", [2, 2 ** 63 - 1], 16))
    yield ("f5_f4_odd", "F5", "F4 shape [3]: 12 bits", 422, "misaligned", cfg,
           one(t0[0], "F4", [3], 1))
    yield "f5_f128", "F5", "dtype F128", 422, "bad_dtype", cfg, one(t0[0], "F128", [1], 16)
    yield ("f5_neg_dim", "F5", "shape [-1]", 422, "tensor_invalid_info", cfg,
           st_bytes(header_text([(t0[0], "F32", "[-1]", [0, 4])]), b"\0" * 4))
    yield ("f5_frac_dim", "F5", "shape [1.5]", 422, "tensor_invalid_info", cfg,
           st_bytes(header_text([(t0[0], "F32", "[1.5]", [0, 4])]), b"\0" * 4))
    # F6: polyglots
    yield ("f6_zip", "F6", "a zip appended", 422, "metadata_incomplete_buffer", cfg,
           good_file + b"PK\x03\x04" + b"\0" * 26)
    yield ("f6_pickle", "F6", "a pickle appended", 422, "metadata_incomplete_buffer", cfg,
           good_file + b"\x80\x02}q\x00.")
    # F7: metadata
    yield ("f7_nonstring", "F7", "__metadata__ value 1", 422, "bad_metadata", cfg,
           tensors_file(good, metadata={"format": 1}))
    yield ("f7_huge", "F7", "a 10 MB metadata string", 422, "metadata_too_large", cfg,
           tensors_file(good, metadata={"chat_template": "x" * 10000000}))
    yield ("f7_template", "F7", "a Jinja chat_template in metadata: inert text (accepted)", 201,
           None, cfg, tensors_file(good, metadata={"format": "pt", "chat_template":
                                                   "{{ ''.__class__.__mro__ }}{% raw %}"}))
    # F8: header bloat
    n = 100000
    ents = ",".join("\"t%d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%d,%d]}"
                    % (i, i, i + 1) for i in range(n))
    yield ("f8_bloat", "F8", "100,000 one-byte tensors", 422, "too_many_tensors", cfg,
           st_bytes(("{" + ents + "}").encode(), b"\0" * n))
    # F9: adapter_config.json (the weights are the good ones)
    f9 = [
        ("f9_no_r", "r missing", config(r=DROP), "missing_field"),
        ("f9_no_alpha", "lora_alpha missing", config(lora_alpha=DROP), "missing_field"),
        ("f9_no_targets", "target_modules missing", config(target_modules=DROP),
         "missing_field"),
        ("f9_r_zero", "r 0", config(r=0), "invalid_rank"),
        ("f9_r_neg", "r -8", config(r=-8), "invalid_rank"),
        ("f9_r_1024", "r 1024 (> 512)", config(r=1024), "invalid_rank"),
        ("f9_r_str", "r \"8\"", config(r="8"), "invalid_rank"),
        ("f9_r_frac", "r 8.5", config(r=8.5), "invalid_rank"),
        ("f9_alpha_zero", "lora_alpha 0", config(lora_alpha=0), "invalid_alpha"),
        ("f9_alpha_nan", "lora_alpha NaN (not JSON)",
         config(lora_alpha=ALPHA).replace(b"\"lora_alpha\": %d" % ALPHA,
                                           b"\"lora_alpha\": NaN"), "invalid_config"),
        ("f9_alpha_1e309", "lora_alpha 1e309 (overflows a double)",
         config(lora_alpha=ALPHA).replace(b"\"lora_alpha\": %d" % ALPHA,
                                           b"\"lora_alpha\": 1e309"), "invalid_config"),
        ("f9_dora", "use_dora true", config(use_dora=True), "unsupported_feature"),
        ("f9_modules_to_save", "modules_to_save [lm_head]", config(modules_to_save=["lm_head"]),
         "unsupported_feature"),
        ("f9_bias_all", "bias all", config(bias="all"), "unsupported_feature"),
        ("f9_peft_ia3", "peft_type IA3", config(peft_type="IA3"), "unknown_peft_type"),
        ("f9_dup_key", "r twice", config().replace(b"{", b"{\"r\": 4,", 1), "duplicate_key"),
    ]
    for name, what, c, reason in f9:
        yield name, "F9", what, 422, reason, c, good_file
    yield ("f9_base_other", "F9", "base_model_name_or_path names another model: informational "
           "unless the operator names the served base (accepted)", 201, None,
           config(base_model_name_or_path="meta-llama/Llama-2-7b-hf"), good_file)

    # F10: weights against config and base
    def pairs(*ps):
        return tensors_file([t for p in ps for t in p])

    yield ("f10_rank", "F10", "lora_A rank 8 with r 4", 422, "shape_mismatch", cfg,
           pairs(base.pair(0, "q_proj", r=8)))
    n_out, n_in = module_shape(base.cfg, "q_proj")
    yield ("f10_in_dim", "F10", "lora_A in_features half the base's", 422, "shape_mismatch", cfg,
           pairs(base.pair(0, "q_proj", shape_a=(R, n_in // 2))))
    yield ("f10_out_dim", "F10", "lora_B out_features + 1", 422, "shape_mismatch", cfg,
           pairs(base.pair(0, "q_proj", shape_b=(n_out + 1, R))))
    yield ("f10_not_target", "F10", "k_proj weights, target_modules [q_proj, v_proj]", 422,
           "unbound_tensor", cfg, pairs(base.valid(), base.pair(0, "k_proj")))
    yield ("f10_absent_module", "F10", "target_modules names to_out.0 (vLLM #4915)", 422,
           "unknown_module", config(target_modules=["q_proj", "v_proj", "to_out.0"]), good_file)
    yield ("f10_layer_oob", "F10", "layer index = n_layers", 422, "layer_out_of_range", cfg,
           pairs(base.valid(), base.pair(base.cfg["num_hidden_layers"], "q_proj")))
    yield ("f10_a_without_b", "F10", "lora_A without lora_B", 422, "missing_pair", cfg,
           tensors_file(base.valid() + base.pair(1, "q_proj")[:1]))
    yield ("f10_bad_key", "F10", "a key outside the PEFT pattern", 422, "unbound_tensor", cfg,
           tensors_file(base.valid() + [("model.embed.weight", "F32", [1], b"\0" * 4)]))
    yield ("f10_dup_binding", "F10", "the same weight with and without base_model.model.", 422,
           "duplicate_binding", cfg,
           tensors_file(base.valid() + base.pair(0, "q_proj", prefix="")[:1]))
    yield ("f10_no_tensors", "F10", "0 tensors (metadata only)", 422, "no_tensors", cfg,
           st_bytes(b"{\"__metadata__\":{\"format\":\"pt\"}}"))
    # F11: dtypes and values
    yield "f11_bf16", "F11", "BF16 weights (accepted)", 201, None, cfg, tensors_file(
        base.valid("BF16"))
    yield "f11_f16", "F11", "F16 weights (accepted)", 201, None, cfg, tensors_file(
        base.valid("F16"))
    yield "f11_i32", "F11", "I32 weights", 422, "bad_dtype", cfg, tensors_file(
        base.valid("I32"))
    nan = [list(t) for t in base.valid()]
    b = bytearray(nan[1][3])
    b[8:12] = struct.pack("<f", float("nan"))
    nan[1][3] = bytes(b)
    yield "f11_nan", "F11", "a NaN in lora_B", 422, "non_finite", cfg, tensors_file(
        [tuple(t) for t in nan])
    inf = [list(t) for t in base.valid("F16")]
    b = bytearray(inf[2][3])
    b[-2:] = b"\x00\x7c"
    inf[2][3] = bytes(b)
    yield "f11_inf_f16", "F11", "an F16 +inf in lora_A", 422, "non_finite", cfg, tensors_file(
        [tuple(t) for t in inf])


def generate(out, model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        base = Base(json.load(f))
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    manifest = []
    for name, test, what, expect, reason, cfg, weights in cases(base):
        d = os.path.join(out, name)
        os.makedirs(d)
        with open(os.path.join(d, "adapter_config.json"), "wb") as f:
            f.write(cfg)
        with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
            f.write(weights)
        manifest.append({"name": name, "test": test, "what": what, "expect": expect,
                         "reason": reason})
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main(argv):
    if len(argv) < 2 or argv[1].startswith("-"):
        print("usage: gen_hostile_corpus.py OUT_DIR [--model DIR]", file=sys.stderr)
        return 2
    model = os.path.join(ROOT, "data", "model")
    if "--model" in argv:
        model = argv[argv.index("--model") + 1]
    m = generate(argv[1], model)
    print("wrote %d cases to %s" % (len(m), argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
