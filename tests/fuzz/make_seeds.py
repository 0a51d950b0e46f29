#!/usr/bin/python3
"""make_seeds.py - writes the committed seed corpora under tests/fuzz/corpus/<target>/.

Run from anywhere: /usr/bin/python3 tests/fuzz/make_seeds.py. The seeds are small on
purpose (the fuzzer grows its own corpus in build-fuzz/corpus/); rerunning rewrites the
same files, and files not written here (reproducers of fixed crashes) are left alone."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def st_image(tensors, metadata=None, header=None, n_header=None, pad=b""):
    """tensors: [(name, dtype, shape, bytes)], contiguous offsets in order."""
    h, data = {}, b""
    if metadata is not None:
        h["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        h[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = (header if header is not None else json.dumps(h, separators=(",", ":"))).encode() + pad
    n = len(text) if n_header is None else n_header
    return struct.pack("<Q", n) + text + data


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


# ---- safetensors ----
put("safetensors", "f32_scalar", st_image([("x", "F32", [1], f32(2.5))]))
put("safetensors", "mixed_meta", st_image(
    [("a", "BF16", [2, 2], b"\x80\x3f" * 4), ("b", "F16", [3], b"\x00\x3c" * 3),
     ("c", "I32", [2], b"\x01\x00\x00\x00" * 2), ("e", "F32", [0, 4], b""),
     ("s", "F32", [], f32(1.0))], metadata={"format": "pt"}, pad=b"   "))
put("safetensors", "empty_header", st_image([], header="{}"))
put("safetensors", "dup_key", st_image([], header='{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
                                        '"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}') + b"abcd")
put("safetensors", "overlap", st_image([], header='{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                        '"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}') + b"abcd")
put("safetensors", "huge_len", struct.pack("<Q", 2**64 - 1) + b"{}")
put("safetensors", "shape_overflow", st_image([], header='{"a":{"dtype":"F64","shape":[4294967296,4294967296,16],'
                                               '"data_offsets":[0,8]}}') + b"\0" * 8)
put("safetensors", "meta_not_string", st_image([], header='{"__metadata__":{"k":1}}'))

# ---- lora_config ----
DIMS = {"q_proj": (8, 8), "k_proj": (4, 8), "v_proj": (4, 8), "o_proj": (8, 8),
        "gate_proj": (12, 8), "up_proj": (12, 8), "down_proj": (8, 12)}
PAR = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
       "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def adapter(mods, r=2, layers=(0, 1), dtype="F32", prefix="base_model.model."):
    t = []
    size = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    for l in layers:
        for m in mods:
            out, inn = DIMS[m]
            for ab, shape in (("A", [r, inn]), ("B", [out, r])):
                n = shape[0] * shape[1]
                t.append(("%smodel.layers.%d.%s.%s.lora_%s.weight" % (prefix, l, PAR[m], m, ab),
                          dtype, shape, b"\x00\x3e" * (n * size // 2)))
    return st_image(t, metadata={"format": "pt"})


def cfg(**kw):
    c = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 16,
         "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.05, "bias": "none",
         "fan_in_fan_out": False, "use_dora": False, "modules_to_save": None}
    c.update(kw)
    return json.dumps(c)


put("lora_config", "plain", cfg())
put("lora_config", "rslora_patterns", cfg(use_rslora=True, rank_pattern={"q_proj": 2},
                                          alpha_pattern={"layers.1.self_attn.v_proj": 4}))
put("lora_config", "regex_layers", cfg(target_modules=".*\\.(q|v)_proj", layers_to_transform=[0, 1]))
put("lora_config", "refusals", cfg(fan_in_fan_out=True, use_dora=True, modules_to_save=["lm_head"]))
put("lora_config", "ia3", cfg(peft_type="IA3"))
put("lora_config", "all_mlp_bf16", cfg(target_modules=["gate_proj", "up_proj", "down_proj"], r=3)
    .encode() + b"\0" + adapter(["gate_proj", "up_proj", "down_proj"], r=3, dtype="BF16"))
put("lora_config", "f16_no_prefix", cfg(target_modules=["k_proj", "o_proj"])
    .encode() + b"\0" + adapter(["k_proj", "o_proj"], dtype="F16", prefix="", layers=(1,)))
put("lora_config", "wrong_shape", cfg(r=4).encode() + b"\0" + adapter(["q_proj", "v_proj"], r=2))

# ---- tokenizer: byte 0 = flags (1 add_special, 2 parse_special, 4 skip_special) ----
put("tokenizer", "hello", b"\x03Hello world")
put("tokenizer", "inst", b"\x07<s>[INST] Hi there [/INST] </s>")
put("tokenizer", "unicode", "\x01  caf\u00e9 \u4f60\u597d \U0001F600\u2581\u2581x\t\n".encode())
put("tokenizer", "bytes_ids", b"\x04\x01\x00\xd3\x3a\x03\x00\x0d\x01\xff\x7c")
put("tokenizer", "invalid_utf8", b"\x03ab\xc3\x28\xe2\x82")

# ---- jinja: even byte 0 = template, odd = content for fixture template byte 1 ----
put("jinja", "loop", "\0{% for m in messages %}{{ loop.index }}:{{ m.role|upper }}={{ m.content|trim }}"
    "{% if not loop.last %}, {% endif %}{% endfor %}")
put("jinja", "macro_ns", "\0{% set ns = namespace(n=0) %}{% macro f(x, y=2) %}{{ x * y }}{% endmacro %}"
    "{% for t in tools %}{% set ns.n = ns.n + 1 %}{{ t.function.name ~ f(ns.n) }}{% endfor %}"
    "{{ tools|tojson(indent=2) }}{{ n|length }}{{ n[1:3] }}{{ 'a,b'.split(',')|join('-') }}")
put("jinja", "raise", "\0{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must alternate') }}"
    "{% endif %}{{ bos_token }}{{ messages|selectattr('role','equalto','user')|list|length }}")
put("jinja", "filters", "\0{{ (messages|last).content|replace('2','two')|title }}{{ 7 // 2 }}{{ -7 % 3 }}"
    "{{ 'x' if add_generation_prompt else 'y' }}{{ range(3)|map('string')|join }}{{ {'a':1}.items()|list }}"
    "{% filter upper %}x{% endfilter %}{{ '%s'|format(1) }}")
with open(os.path.join(ROOT, "tests/fixtures/chat_templates/llama31_tools.jinja"), "rb") as f:
    put("jinja", "llama31_tools", b"\0" + f.read())
put("jinja", "content_llama2", b"\x01\x02Hello <s>[INST] {{ x }} {% raw %}")
put("jinja", "content_system", b"\x01\x17system at the end")

# ---- json_api: byte 0 = route (see fuzz_json_api.c), rest = body ----
R = ["completions", "chat", "score", "tokenize", "detokenize", "alias", "load", "upload",
     "upload_named", "tenant_patch", "pin", "models"]
put("json_api", "completions", bytes([0]) + json.dumps(
    {"model": "alpha", "prompt": "Hello", "max_tokens": 4, "temperature": 0, "stop": ["\n"],
     "logprobs": 2, "stream": True, "stream_options": {"include_usage": True}}).encode())
put("json_api", "completions_mix", bytes([0]) + json.dumps(
    {"model": "tiny", "prompt": [1, 15043], "adapters": [{"name": "alpha", "weight": 0.5},
                                                          {"name": "alpha@1", "weight": -1}],
     "combination": "linear"}).encode())
put("json_api", "chat", bytes([1]) + json.dumps(
    {"model": "tiny", "lora": [{"id": "alpha", "scale": 1}], "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
     "logprobs": True, "top_logprobs": 2, "max_completion_tokens": 3}).encode())
put("json_api", "score", bytes([2]) + json.dumps({"model": "tiny", "prompt": "a", "target": "b",
                                                   "adapter": "alpha"}).encode())
put("json_api", "tokenize", bytes([3]) + json.dumps({"prompt": "Hello <s> world",
                                                      "add_special_tokens": False}).encode())
put("json_api", "detokenize", bytes([4]) + json.dumps({"tokens": [1, 15043, 31999, 0]}).encode())
put("json_api", "alias", bytes([5]) + json.dumps({"adapter": "alpha@1"}).encode())
put("json_api", "load", bytes([6]) + json.dumps({"lora_name": "x", "lora_path": "/tmp/../etc",
                                                  "load_inplace": False}).encode())
b = "fzb"
st = adapter(["q_proj"], r=2, layers=(0,))
up = (("--%s\r\nContent-Disposition: form-data; name=\"config\"; filename=\"adapter_config.json\"\r\n"
       "Content-Type: application/json\r\n\r\n" % b).encode()
      + json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}).encode()
      + ("\r\n--%s\r\nContent-Disposition: form-data; name=\"weights\"\r\n\r\n" % b).encode() + st
      + ("\r\n--%s--\r\n" % b).encode())
put("json_api", "upload", bytes([7]) + up)
put("json_api", "upload_named", bytes([8]) + b"preamble\r\n" + up)
put("json_api", "tenant_patch", bytes([9]) + json.dumps({"max_concurrent": 2, "tokens_per_min": 0,
                                                          "share": 1.5}).encode())
put("json_api", "pin", bytes([10]))
put("json_api", "models", bytes([11]))

# ---- http: RELIABILITY 1.2 smuggling inputs and valid API requests ----
H = "Host: x\r\n"
put("http", "get_healthz", "GET /healthz HTTP/1.1\r\n" + H + "\r\n")
body = json.dumps({"model": "alpha", "prompt": "Hi", "max_tokens": 2})
put("http", "post_completions", "POST /v1/completions HTTP/1.1\r\n" + H +
    "Content-Type: application/json\r\nX-Request-Id: abc-1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
tk = json.dumps({"prompt": "Hello"})
put("http", "pipelined", ("POST /tokenize HTTP/1.1\r\n" + H + "Content-Length: %d\r\n\r\n%s" % (len(tk), tk))
    + "GET /v1/models HTTP/1.1\r\n" + H + "Connection: keep-alive\r\n\r\n"
    + "GET /v1/adapters/alpha HTTP/1.0\r\n\r\n")
put("http", "expect_continue", "POST /detokenize?x=1 HTTP/1.1\r\n" + H +
    "Expect: 100-continue\r\nContent-Length: 13\r\n\r\n{\"tokens\":[]}")
put("http", "upload_multipart", ("POST /v1/adapters/up1 HTTP/1.1\r\n" + H +
    "Content-Type: multipart/form-data; boundary=fzb\r\nContent-Length: %d\r\n\r\n" % len(up)).encode() + up)
# smuggling and framing (RELIABILITY 1.2)
put("http", "cl_te", "POST /tokenize HTTP/1.1\r\n" + H + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    "0\r\n\r\nGET /metrics HTTP/1.1\r\n" + H + "\r\n")
put("http", "te_cl", "POST /tokenize HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    "8\r\nSMUGGLED\r\n0\r\n\r\n")
put("http", "te_te_obfuscated", "POST / HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n"
    "Transfer-encoding: x\r\n\r\n0\r\n\r\n")
put("http", "dup_cl", "POST /tokenize HTTP/1.1\r\n" + H + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
put("http", "cl_plus", "POST /tokenize HTTP/1.1\r\n" + H + "Content-Length: +5\r\n\r\nhello")
put("http", "bare_lf", "GET /healthz HTTP/1.1\n" + H + "\n")
put("http", "bare_cr", "GET /healthz HTTP/1.1\r" + H + "\r\n")
put("http", "obs_fold", "GET /healthz HTTP/1.1\r\n" + H + "X-A: 1\r\n 2\r\n\r\n")
put("http", "space_before_colon", "GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n")
put("http", "two_hosts", "GET /healthz HTTP/1.1\r\n" + H + H + "\r\n")
put("http", "http09", "GET /healthz\r\n\r\n")
put("http", "http2_version", "GET /healthz HTTP/2.0\r\n" + H + "\r\n")
put("http", "nul_in_header", b"GET /healthz HTTP/1.1\r\nHost: x\x00y\r\n\r\n")
put("http", "chunk_ext", "POST /tokenize HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n"
    "5;a=\"b\r\nc\"\r\nhello\r\n0\r\n\r\n")
put("http", "abs_uri", "GET http://x/healthz HTTP/1.1\r\n" + H + "\r\n")
put("http", "long_uri", "GET /" + "a" * 9000 + " HTTP/1.1\r\n" + H + "\r\n")
put("http", "auth_act_as", "GET /v1/me HTTP/1.1\r\n" + H + "Authorization: Bearer k\r\n"
    "X-Adapterd-Tenant: t\r\nX-Request-Id: <bad id>\r\n\r\n")
print("seeds written under", os.path.join(HERE, "corpus"))
