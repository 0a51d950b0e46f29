"""test_fixtures.py - the fixture writers themselves (tools/hf_fixtures.py), so a wrong fixture
cannot make the reference comparison pass or fail for the wrong reason.

Checks: bf16 round-to-nearest-even against hand-computed bit patterns; the safetensors layout
(u64 header length, header padded with spaces to 8, contiguous offsets covering the data);
sharded index covering every tensor; PEFT adapter_config fields and key names/shapes.
TAP output; run from the repo root by /usr/bin/python3.
"""

import json
import os
import shutil
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import hf_fixtures as hf  # noqa: E402

TMP = os.path.join(ROOT, "tests", "tmp", "ref", "fixtures")
n_test = n_fail = 0


def tap(cond, name):
    global n_test, n_fail
    n_test += 1
    n_fail += 0 if cond else 1
    print("%s %d - %s" % ("ok" if cond else "not ok", n_test, name), flush=True)


def f32(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def test_bf16():
    # (f32 bits, expected bf16 bits): exact, halfway-to-even down/up, above halfway, NaN.
    cases = [(0x3F800000, 0x3F80), (0x3F808000, 0x3F80), (0x3F818000, 0x3F82),
             (0x3F808001, 0x3F81), (0xBF807FFF, 0xBF80), (0x7F7FFFFF, 0x7F80),
             (0x00000001, 0x0000)]
    got = hf.f32_to_bf16_bits(np.array([f32(b) for b, _ in cases], dtype=np.float32))
    tap(all(int(g) == e for g, (_, e) in zip(got, cases)),
        "bf16 round-to-nearest-even bit patterns %s" % [hex(int(g)) for g in got])
    nan = hf.f32_to_bf16_bits(np.array([np.nan], dtype=np.float32))
    tap(np.isnan(hf.bf16_bits_to_f32(nan))[0], "bf16 keeps NaN a NaN")


def parse_layout(path):
    buf = open(path, "rb").read()
    n = int.from_bytes(buf[:8], "little")
    raw = buf[8:8 + n]
    hdr = json.loads(raw)
    hdr.pop("__metadata__", None)
    spans = sorted(tuple(v["data_offsets"]) for v in hdr.values())
    contiguous = spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    sizes_ok = all(v["data_offsets"][1] - v["data_offsets"][0]
                   == int(np.prod(v["shape"])) * hf.DTYPE_SIZE[v["dtype"]] for v in hdr.values())
    return n, raw, hdr, contiguous and spans[-1][1] == len(buf) - 8 - n, sizes_ok


def test_safetensors():
    p = os.path.join(TMP, "t.safetensors")
    a = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    b = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    hf.write_safetensors(p, [("a", a), ("b", b, "BF16"), ("c", b, "F16")], "F32", {"format": "pt"})
    n, raw, hdr, contiguous, sizes_ok = parse_layout(p)
    pad = len(raw) - len(raw.rstrip(b" "))
    tap(n % 8 == 0 and pad < 8 and raw.rstrip(b" ").endswith(b"}"),
        "header length %d is a multiple of 8, padded with %d spaces" % (n, pad))
    tap(contiguous and sizes_ok, "data offsets contiguous, sized by shape x dtype, cover the file")
    t, meta = hf.read_safetensors(p)
    tap(np.array_equal(t["a"], a) and np.array_equal(t["b"], b) and np.array_equal(t["c"], b)
        and meta == {"format": "pt"}, "round trip F32/BF16/F16 exact for representable values")


def test_model_and_lora():
    d = os.path.join(TMP, "m")
    c = hf.make_llama(d, {"num_hidden_layers": 2}, seed=3, shards=2, qkv_bias=True)
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    names = set()
    for fn in set(idx["weight_map"].values()):
        _, _, hdr, contiguous, sizes_ok = parse_layout(os.path.join(d, fn))
        names |= set(hdr)
        tap(contiguous and sizes_ok, "shard %s layout" % fn)
    want = {n for n, _ in hf.llama_tensors(c, 3, qkv_bias=True)}
    tap(names == want == set(idx["weight_map"]) and "lm_head.weight" in want
        and "model.layers.1.self_attn.k_proj.bias" in want
        and "model.layers.1.self_attn.o_proj.bias" not in want,
        "sharded index covers exactly the %d HF tensor names" % len(want))
    cfg = json.load(open(os.path.join(d, "config.json")))
    tap(cfg["model_type"] == "qwen2" and cfg["architectures"] == ["Qwen2ForCausalLM"],
        "qkv_bias model is declared Qwen2")
    ld = os.path.join(TMP, "l")
    hf.make_lora(ld, c, seed=4, r=4, alpha=8, targets=["v_proj", "q_proj"], layers=[1],
                 rslora=True)
    ac = json.load(open(os.path.join(ld, "adapter_config.json")))
    tap(ac["peft_type"] == "LORA" and ac["task_type"] == "CAUSAL_LM" and ac["r"] == 4
        and ac["lora_alpha"] == 8 and ac["use_rslora"] is True and ac["fan_in_fan_out"] is False
        and ac["layers_to_transform"] == [1] and sorted(ac["target_modules"]) == ["q_proj",
                                                                                  "v_proj"],
        "adapter_config.json fields")
    t, _ = hf.read_safetensors(os.path.join(ld, "adapter_model.safetensors"))
    k = "base_model.model.model.layers.1.self_attn.v_proj."
    tap(set(t) == {k + "lora_A.weight", k + "lora_B.weight",
                   k.replace("v_proj", "q_proj") + "lora_A.weight",
                   k.replace("v_proj", "q_proj") + "lora_B.weight"}
        and t[k + "lora_A.weight"].shape == (4, 64) and t[k + "lora_B.weight"].shape == (32, 4)
        and np.abs(t[k + "lora_B.weight"]).max() > 0, "adapter keys, shapes, nonzero B")


def main():
    shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP)
    test_bf16()
    test_safetensors()
    test_model_and_lora()
    print("1..%d" % n_test)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
