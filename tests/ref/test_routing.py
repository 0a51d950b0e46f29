"""test_routing.py - learned routing over LoRA experts (PHATGOOSE, Arrow, X-LoRA) against the
independent numpy reference tests/ref/ref_routing.py (ADAPTER-MATH 2, 3.1, 3.3, 7.3; T17, T18).

Run from the repo root by /usr/bin/python3 (tests/run.sh). Fixtures (numpy only) go to
tests/tmp/routing-<pid>/ (removed when everything passed): a GQA Llama (3 layers, vocab 300) and
four PEFT LoRA experts with different ranks, alphas and target subsets:

    alpha  r4  alpha 8            q,v            layers 0,1
    beta   r8  alpha 16           o,down
    gamma  r16 alpha 32 rsLoRA    all seven
    delta  r8  alpha 8            q,o,down       layers 0,2

Routers (experts as sub-folders named after them, in config order):
    pg        PHATGOOSE [alpha,beta,gamma,delta] top_k 2 (gate keys with and without prefix)
    arrow     Arrow     [delta,gamma,beta,alpha] top_k 2, temperature 0.5
    xl_peft1  X-LoRA PEFT, depth 1, broadcast, softmax, [alpha,beta,delta] (11 slots)
    xl_peft2  X-LoRA PEFT, depth 2 dropout>0 (layers.0/.3), layerwise, top_k 2, softmax_topk,
              T 0.7, g 1.5, [gamma,alpha,delta,beta] (21 slots)
    xl_peft3  X-LoRA PEFT, depth 2 dropout 0 (layers.0/.2), top_k 1, scaling_pass_value 0.3,
              g 0.8, [alpha,beta,delta] (its scaling pass: the dummy scalings go through
              top-k like real ones, as in PEFT's XLoraLayer.forward, so only alpha at 0.24)
    xl_orig1  original format, depth 3 with ReLU+dropout (inner.0, inner.3, last), bias,
              layerwise, adapters as a list [beta,gamma,alpha], T 1.3
    xl_orig2  original format, depth 2 without ReLU (inner.0, last), no bias, no softmax,
              top_k 2 + softmax_topk, adapters as a map [alpha,delta,beta]
    pg_tie    PHATGOOSE [alpha,delta,beta] top_k 1 with duplicated gate rows (ties)
    pg_one    PHATGOOSE [gamma] top_k 1

Checks ($BUILD/tests/route_dump, $BUILD/tests/logits_dump): lambda and X-LoRA scalings vs
numpy (<= 1e-5, identical selected sets), with overrides and ties; a mixed batch of routed,
single-adapter and base sequences vs the numpy routed forward (max|d|/max|ref| <= 1e-4), whole,
with incremental decode (X-LoRA: dual KV cache == full recompute) and chunked; the routing
statistics; one expert at weight 1 == that adapter alone; that routing matters; refusals of
broken expert folders. Prints TAP and "# max rel err <case> = <value>".
"""

import json
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
import ref_routing as rr  # noqa: E402

TOL_LOGITS = 1e-4
TOL_LAM = 1e-5
BUILD = os.environ.get("BUILD", "build")
BIN = os.path.join(BUILD if os.path.isabs(BUILD) else os.path.join(ROOT, BUILD), "tests")
ROUTE_DUMP = os.path.join(BIN, "route_dump")
LOGITS_DUMP = os.path.join(BIN, "logits_dump")
TMP = os.path.join(ROOT, "tests", "tmp", "routing-%d" % os.getpid())
VOCAB = 300
DIM = 64
N_LAYERS = 3

EXPERTS = {  # name: (seed, r, alpha, targets, layers, rslora)
    "alpha": (41, 4, 8, ["q_proj", "v_proj"], [0, 1], False),
    "beta": (42, 8, 16, ["o_proj", "down_proj"], None, False),
    "gamma": (43, 16, 32, list(hf.MODULES), None, True),
    "delta": (44, 8, 8, ["q_proj", "o_proj", "down_proj"], [0, 2], False),
}

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


def rel_err(got, want):
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want))
                 / max(1e-6, np.max(np.abs(want))))


def P(*a):
    return os.path.join(TMP, *a)


# ---------------------------------------------------------------------------------------------
# fixtures

def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def router_dir(name, experts):
    d = P(name)
    os.makedirs(d)
    for e in experts:
        shutil.copytree(P("experts", e), os.path.join(d, e))
    return d


def module_key(i, m, prefix=True):
    return "%smodel.layers.%d.%s.%s" % ("base_model.model." if prefix else "", i, hf.PARENT[m], m)


def targeted(c, experts):
    """[(layer, module)] targeted by some expert of the list, in X-LoRA slot order."""
    out = []
    for i in range(N_LAYERS):
        for m in hf.MODULES:
            if any(m in EXPERTS[e][3] and (EXPERTS[e][4] is None or i in EXPERTS[e][4])
                   for e in experts):
                out.append((i, m))
    return out


def make_phatgoose(c, name, experts, top_k, rng, tie=None, temperature=None):
    """tie: (a, b) expert positions whose gate rows are made equal wherever both target the
    module (duplicate rows -> exact score ties)."""
    d = router_dir(name, experts)
    cfg = {"router_type": "phatgoose", "experts": experts, "top_k": top_k}
    if temperature is not None:
        cfg["temperature"] = temperature
    write_json(os.path.join(d, "router_config.json"), cfg)
    tensors = []
    for n, (i, m) in enumerate(targeted(c, experts)):
        n_in = hf.module_shape(c, m)[1]
        g = (rng.standard_normal((len(experts), n_in)) + 0.3 * rng.standard_normal(n_in))
        if tie:
            g[tie[1]] = g[tie[0]]
        tensors.append((module_key(i, m, prefix=n % 3 != 1) + ".phatgoose_gate",
                        g.astype(np.float32)))
    hf.write_safetensors(os.path.join(d, "router_gates.safetensors"), tensors, "F32",
                         {"format": "pt"})
    return d


def classifier(rng, n_in, widths, bias=True):
    """[(W, b or None)] for linears n_in -> widths[0] -> ... (logit std ~2 at the output)."""
    out, k = [], n_in
    for w in widths:
        W = (rng.standard_normal((w, k)) * 2.0 / np.sqrt(k)).astype(np.float32)
        b = (0.3 * rng.standard_normal(w)).astype(np.float32) if bias else None
        out.append((W, b))
        k = w
    return out


def xlora_fields(n_experts, n_slots, depth, layerwise, **kw):
    f = {"hidden_size": DIM, "enable_softmax": True, "enable_softmax_topk": False,
         "softmax_temperature": 1.0, "layerwise_scalings": layerwise, "top_k_lora": None,
         "xlora_depth": depth, "xlora_size": 16, "xlora_dropout_p": 0.2,
         "use_trainable_adapters": False, "scaling_pass_value": 0.0,
         "global_scaling_weight": 1.0}
    f.update(kw)
    widths = [16] * (depth - 1) + [n_experts * (n_slots if layerwise else 1)]
    return f, widths


def make_xlora_peft(c, name, experts, depth, layerwise, rng, **kw):
    d = router_dir(name, experts)
    n_slots = len(targeted(c, experts))
    f, widths = xlora_fields(len(experts), n_slots, depth, layerwise, **kw)
    cfg = {"peft_type": "XLORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "synth",
           "inference_mode": True, "revision": None,
           "adapters": {e: "./" + e for e in experts}}
    cfg.update(f)
    write_json(os.path.join(d, "adapter_config.json"), cfg)
    step = 3 if f["xlora_dropout_p"] > 0 else 2  # Linear, ReLU[, Dropout] per hidden layer
    tensors = []
    for j, (W, b) in enumerate(classifier(rng, DIM, widths)):
        k = "base_model.internal_xlora_classifier.layers.%d." % (j * step)
        tensors += [(k + "weight", W), (k + "bias", b)]
    hf.write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors, "F32",
                         {"format": "pt"})
    return d


def make_xlora_orig(c, name, experts, depth, layerwise, rng, relu, bias, as_map, **kw):
    d = router_dir(name, experts)
    n_slots = len(targeted(c, experts))
    f, widths = xlora_fields(len(experts), n_slots, depth, layerwise, **kw)
    cfg = {"base_model_id": "synth", "enable_relu_and_dropout": relu, "use_bias": bias,
           "adapters": {e: os.path.join(d, e) for e in experts} if as_map else list(experts)}
    cfg.update(f)
    write_json(os.path.join(d, "xlora_config.json"), cfg)
    step = 3 if relu else 1  # inner: Linear[, ReLU, Dropout] each
    lin = classifier(rng, DIM, widths, bias)
    tensors = []
    for j, (W, b) in enumerate(lin):
        k = "last." if j == len(lin) - 1 else "inner.%d." % (j * step)
        tensors.append((k + "weight", W))
        if b is not None:
            tensors.append((k + "bias", b))
    hf.write_safetensors(os.path.join(d, "xlora_classifier.safetensors"), tensors, "F32")
    return d


ROUTERS = ["pg", "arrow", "xl_peft1", "xl_peft2", "xl_peft3", "xl_orig1", "xl_orig2",
           "pg_tie", "pg_one"]


def make_fixtures():
    shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP)
    c = hf.make_llama(P("model"), {"vocab_size": VOCAB, "hidden_size": DIM,
                                   "intermediate_size": 160, "num_hidden_layers": N_LAYERS,
                                   "num_attention_heads": 4, "num_key_value_heads": 2},
                      seed=31)
    for n, (seed, r, alpha, targets, layers, rs) in EXPERTS.items():
        hf.make_lora(P("experts", n), c, seed=seed, r=r, alpha=alpha, targets=targets,
                     layers=layers, rslora=rs)
    rng = np.random.default_rng(5)
    make_phatgoose(c, "pg", ["alpha", "beta", "gamma", "delta"], 2, rng, temperature=1.0)
    d = router_dir("arrow", ["delta", "gamma", "beta", "alpha"])
    write_json(os.path.join(d, "router_config.json"),
               {"router_type": "arrow", "experts": ["delta", "gamma", "beta", "alpha"],
                "top_k": 2, "temperature": 0.5})
    make_xlora_peft(c, "xl_peft1", ["alpha", "beta", "delta"], 1, False, rng)
    make_xlora_peft(c, "xl_peft2", ["gamma", "alpha", "delta", "beta"], 2, True, rng,
                    top_k_lora=2, enable_softmax_topk=True, softmax_temperature=0.7,
                    global_scaling_weight=1.5, xlora_dropout_p=0.2)
    make_xlora_peft(c, "xl_peft3", ["alpha", "beta", "delta"], 2, False, rng, top_k_lora=1,
                    scaling_pass_value=0.3, global_scaling_weight=0.8, xlora_dropout_p=0.0)
    make_xlora_orig(c, "xl_orig1", ["beta", "gamma", "alpha"], 3, True, rng, relu=True,
                    bias=True, as_map=False, softmax_temperature=1.3)
    make_xlora_orig(c, "xl_orig2", ["alpha", "delta", "beta"], 2, False, rng, relu=False,
                    bias=False, as_map=True, enable_softmax=False, top_k_lora=2,
                    enable_softmax_topk=True)
    # Ties: alpha/delta share q_proj of layer 0, delta/beta share o/down of layers 0 and 2.
    make_phatgoose(c, "pg_tie", ["alpha", "delta", "beta"], 1, rng, tie=(1, 2))
    tie_fix_alpha_delta(c)
    make_phatgoose(c, "pg_one", ["gamma"], 1, rng)
    return c


def tie_fix_alpha_delta(c):
    """pg_tie: also make alpha's row equal delta's at q_proj layer 0 (rows 0 and 1)."""
    path = P("pg_tie", "router_gates.safetensors")
    t, _ = hf.read_safetensors(path)
    tensors = []
    for k, v in t.items():
        v = np.array(v, dtype=np.float32)
        if k.endswith("layers.0.self_attn.q_proj.phatgoose_gate"):
            v[0] = v[1]
        tensors.append((k, v))
    hf.write_safetensors(path, tensors, "F32", {"format": "pt"})


# ---------------------------------------------------------------------------------------------
# running the tools

def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def route_dump(router, args, rows, width, out_width):
    """-> (N, out_width) float32 or None."""
    xin, out = P("in.f32"), P("out.f32")
    np.ascontiguousarray(rows, dtype="<f4").tofile(xin)
    if os.path.exists(out):
        os.remove(out)
    flag = "--xlora-h" if "--layer" not in args else "--in"
    p = run([ROUTE_DUMP, "--model", P("model"), "--router", P(router)] + list(args)
            + [flag, xin, "--rows", str(len(rows)), "--out", out])
    if p.returncode != 0:
        diag("route_dump %s %s failed (exit %d): %s" % (router, " ".join(args), p.returncode,
                                                        p.stderr.strip()[-600:]))
        return None
    data = np.fromfile(out, dtype="<f4")
    if data.size != len(rows) * out_width:
        diag("route_dump wrote %d floats, expected %d" % (data.size, len(rows) * out_width))
        return None
    return data.reshape(len(rows), out_width)


def logits_dump(seqs, routers, loras=(), extra=(), routing_out=False):
    """seqs: [(tokens, spec)] with spec None (base), ("l", k) or ("r", k).
    -> (list of (T, V) arrays or None, CompletedProcess, routing bytes or None)."""
    out, rout = P("logits.f32"), P("routing.bin")
    for f in (out, rout):
        if os.path.exists(f):
            os.remove(f)
    cmd = [LOGITS_DUMP, "--model", P("model")]
    for d in loras:
        cmd += ["--lora", d]
    for r in routers:
        cmd += ["--router", P(r)]
    cmd += list(extra) + ["--out", out] + (["--routing-out", rout] if routing_out else [])
    for toks, sp in seqs:
        suffix = "" if sp is None else ("@%d" % sp[1] if sp[0] == "l" else "@r%d" % sp[1])
        cmd.append(",".join(str(int(t)) for t in toks) + suffix)
    p = run(cmd)
    if p.returncode != 0:
        return None, p, None
    data = np.fromfile(out, dtype="<f4")
    if data.size != sum(len(t) for t, _ in seqs) * VOCAB:
        diag("logits_dump wrote %d floats" % data.size)
        return None, p, None
    res, at = [], 0
    for toks, _ in seqs:
        res.append(data[at:at + len(toks) * VOCAB].reshape(len(toks), VOCAB))
        at += len(toks) * VOCAB
    return res, p, (open(rout, "rb").read() if routing_out else None)


# ---------------------------------------------------------------------------------------------
# the reference

class Ref:
    def __init__(self):
        self.m = ref.load_model(P("model"))
        self.r = {n: rr.load_router_dir(P(n), N_LAYERS) for n in ROUTERS}
        self.experts = {n: ref.load_lora(P("experts", n)) for n in EXPERTS}
        self.cache = {}

    def logits(self, toks, spec, top_k=0, temp=0.0):
        """spec: None, ("lora", name) or ("router", name). -> (logits, stats)."""
        key = (tuple(toks), spec, top_k, temp)
        if key not in self.cache:
            stats = {}
            if spec is None:
                lg = ref.forward(self.m, toks)
            elif spec[0] == "lora":
                lg = ref.forward(self.m, toks, self.experts[spec[1]])
            else:
                lg = rr.forward_routed(self.m, toks, self.r[spec[1]], top_k, temp, stats)
            self.cache[key] = (lg, stats)
        return self.cache[key]


# ---------------------------------------------------------------------------------------------
# checks

def numpy_selfchecks(R, rng):
    toks = rng.integers(0, VOCAB, 9).tolist()
    cat = ref.compose_cat([(R.experts[n], w) for n, w in
                           (("alpha", 0.7), ("beta", -0.4), ("gamma", 1.1), ("delta", 0.5))])
    e = rel_err(rr.forward_hooked(R.m, toks, rr.lora_hook(cat))[0], ref.forward(R.m, toks, cat))
    tap(e <= 1e-12, "numpy: hooked forward == ref_llama.forward for a 4-term composition (%.2g)"
        % e)
    e = rel_err(R.logits(toks, ("router", "pg_one"))[0], R.logits(toks, ("lora", "gamma"))[0])
    tap(e <= 1e-12, "numpy: one-expert PHATGOOSE router (weight 1) == gamma alone (%.2g)" % e)
    _, h = rr.forward_hooked(R.m, toks)
    st = R.logits(toks, ("router", "xl_peft1"))[1]
    tap(np.array_equal(st["h"], h), "numpy: X-LoRA scaling pass with value 0 == the base model")
    # X-LoRA a second way for one token (lambda is then a constant per expert): both passes
    # as static "cat" compositions through ref_llama.forward. xl_peft3's scaling pass: its
    # dummy scalings (0.3 each) through top_k 1 keep expert 0 only (tie -> lower index), g 0.8.
    t1 = toks[:1]
    for name, dummy in (("xl_peft1", [0.0, 0.0, 0.0]), ("xl_peft3", [0.24, 0.0, 0.0])):
        r = R.r[name]
        xl = r["xlora"]
        g = xl["g"]
        h0 = rr.forward_hooked(R.m, t1, rr.lora_hook(ref.compose_cat(
            [(e, w) for e, w in zip(r["experts"], dummy)])))[1]
        S = rr.xlora_classify(xl, h0)
        want = ref.forward(R.m, t1, ref.compose_cat([(e, g * S[0, 0, j])
                                                      for j, e in enumerate(r["experts"])]))
        e = rel_err(R.logits(t1, ("router", name))[0], want)
        tap(e <= 1e-12, "numpy: %s one token == static cat composition g*S (%.2g)" % (name, e))
    _, h3 = rr.forward_hooked(R.m, toks, rr.lora_hook(ref.compose_cat(
        [(R.r["xl_peft3"]["experts"][0], 0.3 * 0.8)])))
    tap(rel_err(R.logits(toks, ("router", "xl_peft3"))[1]["h"], h3) <= 1e-12
        and rel_err(h3, h) > 0.01, "numpy: scaling_pass_value 0.3 with top_k 1: the scaling "
        "pass applies expert 0 at 0.3*g (and changes h)")
    d = [rr.xlora_dummy(R.r[n]["xlora"]).tolist() for n in ("xl_peft1", "xl_peft3")]
    xl2 = dict(R.r["xl_peft2"]["xlora"], scaling_pass_value=0.5)
    d2 = rr.xlora_dummy(xl2).tolist()
    tap(d == [[0, 0, 0], [0.24, 0, 0]] and np.allclose(d2, [0.75, 0.75, 0, 0]),
        "numpy: dummy scalings through top-k / softmax_topk, times g (%s, %s)" % (d, d2))
    # Scalings shapes: softmax rows sum to 1, top-k leaves k nonzero, broadcast slots equal.
    hh = rng.standard_normal((10, DIM))
    S1 = rr.xlora_classify(R.r["xl_peft1"]["xlora"], hh)
    S2 = rr.xlora_classify(R.r["xl_peft2"]["xlora"], hh)
    S3 = rr.xlora_classify(R.r["xl_peft3"]["xlora"], hh)
    tap(np.allclose(S1.sum(-1), 1) and np.all(S1 == S1[:, :1]) and np.all(S1 > 0)
        and np.allclose(S2.sum(-1), 1) and np.all((S2 > 0).sum(-1) == 2)
        and not np.all(S2 == S2[:, :1]) and np.all((S3 > 0).sum(-1) == 1)
        and np.all(S3.max(-1) < 1), "numpy: X-LoRA scalings: softmax sums, top-k counts, "
        "broadcast vs layerwise")

    # PHATGOOSE as r-three computes it: softmax over all, top-2, renormalise (+1e-6).
    r, x = R.r["pg"], rng.standard_normal((20, DIM))
    lam = rr.route(r, 0, "q_proj", x)
    cand = rr.candidates(r, 0, "q_proj")
    sc = rr.ln_noaffine(x) @ rr.ln_noaffine(r["gates"][(0, "q_proj")]).T / np.sqrt(DIM)
    sc = np.where(cand, sc, -np.inf)
    p = np.exp(sc - sc.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    keep = np.argsort(-p, axis=1, kind="stable")[:, :2]
    w = np.zeros_like(p)
    for i in range(len(p)):
        w[i, keep[i]] = p[i, keep[i]] / (p[i, keep[i]].sum() + 1e-6)
    e = float(np.max(np.abs(w - lam)))
    tap(e <= 1e-5 and np.array_equal(w > 0, lam > 0) and np.all((lam > 0).sum(1) == 2),
        "numpy: PHATGOOSE top-2 softmax == r-three's renormalised top-2 (%.2g)" % e)

    # Arrow: np.linalg.svd prototype == PEFT-style power iteration on (BA)^T BA.
    A, B, _ = R.experts["gamma"][(1, "up_proj")]
    v = rr.arrow_prototype(A, B)
    M = (B @ A).T @ (B @ A)
    u = np.random.default_rng(0).standard_normal(M.shape[0])
    for _ in range(200):
        u = M @ u
        u /= np.linalg.norm(u)
    e = 1.0 - abs(float(u @ v))
    tap(e <= 1e-9, "numpy: Arrow SVD prototype == power-iteration vector up to sign (1-|cos| "
        "= %.2g)" % e)

    # Tie rule: stable order keeps the lower index.
    m = rr.topk_mask(np.array([[1.0, 2.0, 2.0, 0.5], [3.0, 3.0, 3.0, 3.0]]), 1)
    tap(m[0].tolist() == [False, True, False, False] and m[1].tolist() == [True, False, False,
                                                                          False],
        "numpy: top-k ties go to the lower index")


def check_info(c):
    want = {"pg": ("phatgoose", ["alpha", "beta", "gamma", "delta"], 2, 1.0, 0),
            "arrow": ("arrow", ["delta", "gamma", "beta", "alpha"], 2, 0.5, 0),
            "xl_peft1": ("xlora", ["alpha", "beta", "delta"], 0, 1.0,
                         len(targeted(c, ["alpha", "beta", "delta"]))),
            "xl_peft2": ("xlora", ["gamma", "alpha", "delta", "beta"], 2, 0.7, 21),
            "xl_orig1": ("xlora", ["beta", "gamma", "alpha"], 0, 1.3, 21),
            "xl_orig2": ("xlora", ["alpha", "delta", "beta"], 2, 1.0, 11),
            "pg_tie": ("phatgoose", ["alpha", "delta", "beta"], 1, 1.0, 0)}
    for name, (kind, names, k, t, slots) in want.items():
        p = run([ROUTE_DUMP, "--model", P("model"), "--router", P(name), "--info"])
        try:
            j = json.loads(p.stdout)
            ok = (p.returncode == 0 and j["kind"] == kind and j["names"] == names
                  and j["n_experts"] == len(names) and j["top_k"] == k
                  and abs(j["temperature"] - t) < 1e-6 and j["n_slots"] == slots)
        except (ValueError, KeyError, TypeError):
            ok, j = False, (p.stdout.strip() + " " + p.stderr.strip())[-300:]
        tap(ok, "route_dump --info %s: %s (%s)" % (name, kind, json.dumps(j)[:200]))


def lam_compare(name, got, want):
    if got is None:
        return False, float("inf")
    e = float(np.max(np.abs(got.astype(np.float64) - want)))
    same = np.array_equal(got != 0, want != 0)
    if not same:
        bad = np.flatnonzero(np.any((got != 0) != (want != 0), axis=-1))
        diag("%s: selected sets differ in rows %s; first: got %s want %s"
             % (name, bad[:8].tolist(), got[bad[0]].tolist(), want[bad[0]].tolist()))
    return same and e <= TOL_LAM, e


def check_route(R, c, rng):
    worst = {}
    cases = []  # (router, layer, module, top_k, temp)
    for rname in ("pg", "arrow"):
        for layer, mod in ((0, "q_proj"), (1, "k_proj"), (1, "o_proj"), (2, "down_proj"),
                           (0, "up_proj"), (2, "q_proj")):
            cases.append((rname, layer, mod, 0, 0.0))
        cases += [(rname, 0, "o_proj", 1, 0.0), (rname, 2, "o_proj", 3, 2.5),
                  (rname, 1, "gate_proj", 0, 0.3), (rname, 0, "down_proj", 4, 0.0)]
    cases += [("pg_tie", 0, "q_proj", 0, 0.0), ("pg_tie", 0, "o_proj", 0, 0.0),
              ("pg_tie", 2, "down_proj", 0, 0.0), ("pg_tie", 0, "o_proj", 2, 0.0),
              ("pg_tie", 1, "k_proj", 0, 0.0), ("pg_tie", 1, "v_proj", 0, 0.0)]
    for rname, layer, mod, k, t in cases:
        r = R.r[rname]
        n_in = hf.module_shape(c, mod)[1]
        x = rng.standard_normal((16, n_in)) * 1.5 + 0.2
        x32 = x.astype(np.float32)
        want = rr.route(r, layer, mod, x32.astype(np.float64), k, t)
        args = ["--layer", str(layer), "--module", mod]
        args += (["--top-k", str(k)] if k else []) + (["--temperature", repr(t)] if t else [])
        got = route_dump(rname, args, x32, n_in, r["n_experts"])
        label = "%s layer %d %s%s%s" % (rname, layer, mod, " top_k %d" % k if k else "",
                                         " T %g" % t if t else "")
        ok, e = lam_compare(label, got, want)
        kind = r["kind"] if rname != "pg_tie" else "tie"
        worst[kind] = max(worst.get(kind, 0.0), e)
        extra = ""
        if rname == "pg_tie" and got is not None:
            extra = " nonzero %s" % sorted(set(tuple(np.flatnonzero(g)) for g in got))
        tap(ok, "route_dump lambda %s == numpy (max|d| %.2g)%s" % (label, e, extra))
    # The tie rule itself, stated directly: one winner, the lower index.
    r = R.r["pg_tie"]
    x = rng.standard_normal((8, DIM)).astype(np.float32)
    got = route_dump("pg_tie", ["--layer", "0", "--module", "q_proj"], x, DIM, 3)
    tap(got is not None and np.all(got[:, 0] == 1.0) and np.all(got[:, 1:] == 0.0),
        "tie (alpha == delta gate rows, top_k 1) picks the lower index alpha")
    got = route_dump("pg_tie", ["--layer", "2", "--module", "o_proj"], x, DIM, 3)
    tap(got is not None and np.all(got[:, 1] == 1.0) and np.all(got[:, [0, 2]] == 0.0),
        "tie (delta == beta gate rows, top_k 1) picks the lower index delta")
    for kind, e in worst.items():
        print("# max abs err lambda %s = %.3g" % (kind, e))


def check_xlora_scalings(R, rng):
    worst = 0.0
    for name in ("xl_peft1", "xl_peft2", "xl_peft3", "xl_orig1", "xl_orig2"):
        xl = R.r[name]["xlora"]
        for k, t in ((0, 0.0), (1, 2.0), (2, 0.5)):
            h = (rng.standard_normal((12, DIM)) * 1.2).astype(np.float32)
            want = rr.xlora_classify(xl, h.astype(np.float64), k, t)
            args = (["--top-k", str(k)] if k else []) + (["--temperature", repr(t)] if t else [])
            got = route_dump(name, args, h, DIM, xl["n_slots"] * xl["n_experts"])
            got = None if got is None else got.reshape(want.shape)
            ok, e = lam_compare("%s scalings" % name, got, want)
            worst = max(worst, e)
            tap(ok, "route_dump X-LoRA scalings %s%s%s == numpy (max|d| %.2g, %d slots)"
                % (name, " top_k %d" % k if k else "", " T %g" % t if t else "", e,
                   xl["n_slots"]))
    print("# max abs err xlora scalings = %.3g" % worst)


BATCH_ROUTERS = ["pg", "arrow", "xl_peft1", "xl_peft2", "xl_peft3", "xl_orig1", "xl_orig2"]


def check_batch(R, name, seqs, extra=(), top_k=0, temp=0.0, routing=False):
    """seqs: [(tokens, spec)] spec None | ("lora", "gamma") | ("router", name)."""
    tool = []
    for toks, sp in seqs:
        if sp is None:
            tool.append((toks, None))
        elif sp[0] == "lora":
            tool.append((toks, ("l", 0)))
        else:
            tool.append((toks, ("r", BATCH_ROUTERS.index(sp[1]))))
    got, p, rout = logits_dump(tool, BATCH_ROUTERS, [P("experts", "gamma")], extra, routing)
    if got is None:
        diag("logits_dump failed (exit %d): %s" % (p.returncode, p.stderr.strip()[-800:]))
        tap(False, "%s: logits_dump runs" % name)
        return None
    worst = 0.0
    for (toks, sp), g in zip(seqs, got):
        want = R.logits(toks, sp, top_k, temp)[0]
        e = rel_err(g, want) if np.all(np.isfinite(g)) else float("inf")
        worst = max(worst, e)
        label = "base" if sp is None else "%s %s" % sp
        print("# max rel err %s [%s, %d tokens] = %.3g" % (name, label, len(toks), e))
        tap(e <= TOL_LOGITS, "%s: %s matches the numpy routed forward (%.2g <= %g)"
            % (name, label, e, TOL_LOGITS))
    print("# max rel err %s = %.3g" % (name, worst))
    if routing:
        check_routing_out(R, name, seqs, rout, top_k, temp)
    return got


def check_routing_out(R, name, seqs, blob, top_k, temp):
    at, ok_all, worst = 0, True, 0.0
    for toks, sp in seqs:
        if sp is None or sp[0] != "router":
            continue
        E = R.r[sp[1]]["n_experts"]
        st = R.logits(toks, sp, top_k, temp)[1]
        n = N_LAYERS * E * 4 + N_LAYERS * 4
        if blob is None or len(blob) < at + n:
            ok_all = False
            break
        rs = np.frombuffer(blob[at:at + N_LAYERS * E * 4], dtype="<f4").reshape(N_LAYERS, E)
        rn = np.frombuffer(blob[at + N_LAYERS * E * 4:at + n], dtype="<i4")
        at += n
        e = float(np.max(np.abs(rs - st["route_sum"]) / np.maximum(1.0, st["route_n"][:, None])))
        worst = max(worst, e)
        good = np.array_equal(rn, st["route_n"]) and e <= 1e-4
        if not good:
            diag("%s routing %s: route_n got %s want %s; route_sum got %s want %s"
                 % (name, sp[1], rn.tolist(), st["route_n"].tolist(),
                    np.round(rs, 4).tolist(), np.round(st["route_sum"], 4).tolist()))
        ok_all &= good
    tap(ok_all and blob is not None and at == len(blob),
        "%s: --routing-out route_sum/route_n == numpy for every routed sequence (max err per "
        "pair %.2g)" % (name, worst))


def main():
    os.chdir(ROOT)
    c = make_fixtures()
    R = Ref()
    rng = np.random.default_rng(2026)
    numpy_selfchecks(R, rng)
    seq = lambda n: rng.integers(0, VOCAB, n).tolist()  # noqa: E731
    s7 = seq(7)
    mixed = [(s7, ("router", "pg")), (seq(9), ("router", "arrow")),
             (seq(6), ("router", "xl_peft1")), (seq(8), ("router", "xl_peft2")),
             (seq(5), ("router", "xl_peft3")), (seq(7), ("router", "xl_orig1")),
             (seq(6), ("router", "xl_orig2")), (seq(5), ("lora", "gamma")), (seq(4), None),
             (s7, ("router", "arrow")), (s7, ("lora", "gamma")), (s7, None)]

    # Routing matters (numpy): a routed result is far from base and from every expert alone.
    for rn in ("pg", "arrow", "xl_peft1", "xl_peft2"):
        rl = R.logits(s7, ("router", rn))[0]
        d = min([rel_err(rl, R.logits(s7, None)[0])]
                + [rel_err(rl, ref.forward(R.m, s7, ref.compose_cat([(R.experts[e], 1.0)])))
                   for e in R.r[rn]["names"]])
        print("# routed %s vs base / each expert alone: min rel diff %.3g" % (rn, d))
        tap(d > 100 * TOL_LOGITS, "numpy: %s routing differs from base and every single expert "
            "by >> tolerance (%.2g)" % (rn, d))

    have = all(os.access(b, os.X_OK) for b in (ROUTE_DUMP, LOGITS_DUMP))
    if not tap(have, "route_dump and logits_dump built under %s" % BIN):
        print("1..%d" % n_test)
        return 1
    check_info(c)
    check_route(R, c, rng)
    check_xlora_scalings(R, rng)

    got = check_batch(R, "mixed step", mixed, routing=True)
    if got is not None:
        d = min(rel_err(got[0], got[11]), rel_err(got[0], got[10]), rel_err(got[9], got[0]))
        tap(d > 100 * TOL_LOGITS, "adapterd: routed rows differ from base, gamma alone and the "
            "other router on the same tokens (%.2g)" % d)
    longer = [(t if len(t) >= 3 else t + seq(3), sp) for t, sp in mixed]
    check_batch(R, "prefill + 2 decode steps (block 4)", longer, ["--steps", "--block-tokens", "4"],
                routing=True)
    check_batch(R, "chunk 2 (block 4)", mixed, ["--chunk", "2", "--block-tokens", "4"])
    check_batch(R, "chunk 2 + 2 decode steps (block 2)", longer,
                ["--steps", "--chunk", "2", "--block-tokens", "2"], routing=True)
    check_batch(R, "overrides top_k 1 T 2", [(s7, ("router", "pg")), (seq(6), ("router", "arrow")),
                                             (seq(8), ("router", "xl_peft2"))],
                ["--route-top-k", "1", "--route-temperature", "2"], top_k=1, temp=2.0,
                routing=True)
    check_batch(R, "overrides top_k 2 T 0.5", [(seq(6), ("router", "xl_peft3")),
                                               (s7, ("router", "pg")),
                                               (seq(5), ("router", "xl_orig1"))],
                ["--route-top-k", "2", "--route-temperature", "0.5", "--steps"], top_k=2,
                temp=0.5, routing=True)

    # One expert, top_k 1: weight exactly 1 -> the adapter alone.
    s = seq(10)
    got, p, _ = logits_dump([(s, ("l", 0)), (s, ("r", 0))], ["pg_one"], [P("experts", "gamma")])
    e = rel_err(got[1], got[0]) if got is not None else float("inf")
    print("# max rel err one expert vs the adapter alone = %.3g" % e)
    tap(e <= 1e-5, "routing over one expert (top_k 1) == that LoRA alone (%.2g) %s"
        % (e, "" if got is not None else p.stderr.strip()[-300:]))

    # The X-LoRA scaling cache draws from the same pool: 8 tokens in 2-token blocks need 4
    # blocks per cache; a budget of 6 blocks is refused (busy), not overrun; 8 blocks run.
    per_block = 2 * N_LAYERS * 2 * (DIM // 4) * 4 * 2
    s8 = seq(8)
    res = []
    for blocks in (6, 8):
        got, p, _ = logits_dump([(s8, ("r", 0))], ["xl_peft1"], (),
                                ["--block-tokens", "2", "--kv-budget", str(blocks * per_block)])
        res.append((got, p))
    (g6, p6), (g8, p8) = res
    e = rel_err(g8[0], R.logits(s8, ("router", "xl_peft1"))[0]) if g8 else float("inf")
    tap(g6 is None and p6.returncode == 1 and "Sanitizer" not in p6.stderr and e <= TOL_LOGITS,
        "X-LoRA's scaling cache counts against the pool: 6 blocks refused (%s), 8 blocks run "
        "(%.2g)" % (p6.stderr.strip()[-120:], e))

    # Broken expert folders refuse the router, naming the expert.
    d = P("pg_dora")
    shutil.copytree(P("pg"), d)
    cfgp = os.path.join(d, "gamma", "adapter_config.json")
    cfg = json.load(open(cfgp))
    cfg["use_dora"] = True
    write_json(cfgp, cfg)
    p = run([ROUTE_DUMP, "--model", P("model"), "--router", d, "--info"])
    tap(p.returncode not in (0, 2) and "gamma" in p.stderr and "Sanitizer" not in p.stderr,
        "expert with use_dora refuses the router naming it (exit %d: %s)"
        % (p.returncode, p.stderr.strip()[-200:]))
    d = P("xl_nofile")
    shutil.copytree(P("xl_peft1"), d)
    os.remove(os.path.join(d, "beta", "adapter_model.safetensors"))
    p = run([ROUTE_DUMP, "--model", P("model"), "--router", d, "--info"])
    tap(p.returncode not in (0, 2) and "beta" in p.stderr and "Sanitizer" not in p.stderr,
        "expert without its weights file refuses the router naming it (exit %d: %s)"
        % (p.returncode, p.stderr.strip()[-200:]))

    print("1..%d" % n_test)
    if n_fail == 0:
        shutil.rmtree(TMP, ignore_errors=True)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
