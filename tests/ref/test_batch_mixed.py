"""test_batch_mixed.py - one heterogeneous batched step against the numpy reference.

Run from the repo root by /usr/bin/python3 (tests/run.sh). Builds a fixture model (GQA,
3 layers, vocab 300) and four PEFT LoRAs with different ranks and target-module subsets:

    L0 a4    r4   q,v                       alpha 8
    L1 a8    r8   o,down                    alpha 16
    L2 a16   r16  all seven, rsLoRA         alpha 32
    L3 a8b   r8   q,o,down (layers 0,2)     alpha 8   (same rank as a8: "linear" mixes)

then runs $BUILD/tests/logits_dump with ONE core_forward call whose items mix base-only
rows, every adapter alone, "cat" compositions (weights folded in, one negative, one zero,
four terms) and "linear"-mode compositions (PEFT add_weighted_adapter), with sequences of
different lengths, repeated and adjacent sets. Every row's logits must match the numpy
result for that row ALONE (tests/ref/ref_llama.py, float64):

    max|adapterd - ref| / max|ref| <= 1e-4   per sequence

Also: the same batch with chunked prefill over small KV blocks and with incremental decode
steps; numpy self-checks of the composition formulas (term-by-term == stacked rank-sum
LoRA; single-term linear == the adapter); and checks that the compositions matter (a
composition differs from each of its parts, linear differs from cat, by >> tolerance) so the
comparisons could fail. Prints TAP and "# max rel err <case> = <value>".
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
DUMP = os.path.join(BUILD if os.path.isabs(BUILD) else os.path.join(ROOT, BUILD),
                    "tests", "logits_dump")
TMP = os.path.join(ROOT, "tests", "tmp", "ref", "batch_mixed")
VOCAB = 300

# Adapter sets, index = position: (name, kind, [(lora index, weight)]).
SETS = [
    ("a4", "cat", [(0, 1.0)]),
    ("a8", "cat", [(1, 1.0)]),
    ("a16 rslora", "cat", [(2, 1.0)]),
    ("a8b", "cat", [(3, 1.0)]),
    ("0.7*a4 - 1.3*a16", "cat", [(0, 0.7), (2, -1.3)]),
    ("linear 0.6*a8 - 0.9*a8b", "linear", [(1, 0.6), (3, -0.9)]),
    ("cat 0.6*a8 - 0.9*a8b", "cat", [(1, 0.6), (3, -0.9)]),
    ("linear 0.8*a8 + 0.5*a8b", "linear", [(1, 0.8), (3, 0.5)]),
    ("0.5*a4 + a8 - 0.8*a16 + 0.3*a8b", "cat", [(0, 0.5), (1, 1.0), (2, -0.8), (3, 0.3)]),
    ("0*a8 (weight zero)", "cat", [(1, 0.0)]),
    ("-1*a16 (negation)", "cat", [(2, -1.0)]),
]

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


def spec(terms):
    return ",".join("%d:%r" % (i, float(w)) for i, w in terms)


def run_dump(model_dir, loras, sets, seqs, extra=()):
    """sets: SETS-like list; seqs: [(tokens, set index or None)].
    -> (list of (T, V) float32 arrays or None, CompletedProcess)."""
    out = os.path.join(TMP, "out.f32")
    if os.path.exists(out):
        os.remove(out)
    cmd = [DUMP, "--model", model_dir]
    for d in loras:
        cmd += ["--lora", d]
    for _, kind, terms in sets:
        cmd += ["--linear" if kind == "linear" else "--set", spec(terms)]
    cmd += list(extra) + ["--out", out]
    for toks, k in seqs:
        cmd.append(",".join(str(int(t)) for t in toks) + ("" if k is None else "@%d" % k))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        return None, p
    data = np.fromfile(out, dtype="<f4")
    if data.size != sum(len(t) for t, _ in seqs) * VOCAB:
        diag("logits_dump wrote %d floats, expected %d" % (data.size,
                                                          sum(len(t) for t, _ in seqs) * VOCAB))
        return None, p
    res, at = [], 0
    for toks, _ in seqs:
        n = len(toks) * VOCAB
        res.append(data[at:at + n].reshape(len(toks), VOCAB))
        at += n
    return res, p


def make_fixtures():
    shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP)
    P = lambda *a: os.path.join(TMP, *a)  # noqa: E731
    c = hf.make_llama(P("model"), {"vocab_size": VOCAB, "hidden_size": 64,
                                   "intermediate_size": 160, "num_hidden_layers": 3,
                                   "num_attention_heads": 4, "num_key_value_heads": 2},
                      seed=31)
    hf.make_lora(P("a4"), c, seed=41, r=4, alpha=8, targets=["q_proj", "v_proj"])
    hf.make_lora(P("a8"), c, seed=42, r=8, alpha=16, targets=["o_proj", "down_proj"])
    hf.make_lora(P("a16"), c, seed=43, r=16, alpha=32, targets=hf.MODULES, rslora=True)
    hf.make_lora(P("a8b"), c, seed=44, r=8, alpha=8, targets=["q_proj", "o_proj", "down_proj"],
                 layers=[0, 2])
    return P("model"), [P(n) for n in ("a4", "a8", "a16", "a8b")]


class Ref:
    """numpy reference per adapter set, each row computed alone."""

    def __init__(self, model_dir, lora_dirs):
        self.m = ref.load_model(model_dir)
        self.loras = [ref.load_lora(d) for d in lora_dirs]
        self.cache = {}

    def adapter(self, k):
        if k is None:
            return None
        _, kind, terms = SETS[k]
        t = [(self.loras[i], w) for i, w in terms]
        return ref.mix_linear(t) if kind == "linear" else ref.compose_cat(t)

    def logits(self, toks, k):
        key = (tuple(toks), k)
        if key not in self.cache:
            self.cache[key] = ref.forward(self.m, toks, self.adapter(k))
        return self.cache[key]


def set_name(k):
    return "base" if k is None else SETS[k][0]


def check_batch(name, R, model_dir, lora_dirs, seqs, extra=()):
    """One logits_dump run; a TAP line per adapter set (max over its rows) and one overall.
    Returns the per-row outputs (or None)."""
    got, p = run_dump(model_dir, lora_dirs, SETS, seqs, extra)
    if got is None:
        diag("logits_dump failed (exit %d): %s" % (p.returncode, p.stderr.strip()[-800:]))
        tap(False, "%s: logits_dump runs" % name)
        return None
    per_set = {}
    for (toks, k), g in zip(seqs, got):
        e = rel_err(g, R.logits(toks, k)) if np.all(np.isfinite(g)) else float("inf")
        per_set.setdefault(k, []).append((len(toks), e))
    worst = 0.0
    for k, rows in per_set.items():
        e = max(x for _, x in rows)
        worst = max(worst, e)
        print("# max rel err %s [%s] = %.3g (rows of length %s)"
              % (name, set_name(k), e, ",".join(str(n) for n, _ in rows)), flush=True)
        tap(e <= TOL, "%s: %s rows match numpy alone (%.2g <= %g)" % (name, set_name(k), e, TOL))
    print("# max rel err %s = %.3g" % (name, worst), flush=True)
    return got


def numpy_selfchecks(R, toks):
    """The composition formulas, checked a second way; and that they matter."""
    L = R.loras
    for k in (4, 8):
        terms = [(L[i], w) for i, w in SETS[k][2]]
        e = rel_err(ref.forward(R.m, toks, ref.compose_cat_stacked(terms)), R.logits(toks, k))
        tap(e <= 1e-10, "numpy: %s term by term == one stacked rank-sum LoRA (%.2g)"
            % (SETS[k][0], e))
    e = rel_err(ref.forward(R.m, toks, ref.mix_linear([(L[1], 0.8)])),
                ref.forward(R.m, toks, ref.compose_cat([(L[1], 0.8)])))
    tap(e <= 1e-10, "numpy: linear mix of one term (w > 0) == that adapter at weight w (%.2g)"
        % e)
    e = rel_err(R.logits(toks, 9), R.logits(toks, None))
    tap(e == 0.0, "numpy: weight-zero set == base (%.2g)" % e)
    try:
        ref.mix_linear([(L[0], 1.0), (L[2], 1.0)])
        tap(False, "numpy: linear mix of ranks 4 and 16 raises")
    except ValueError:
        tap(True, "numpy: linear mix of ranks 4 and 16 raises")

    # The compositions matter: each far from its parts, linear far from cat.
    comp = R.logits(toks, 4)
    for name, other in (("base", R.logits(toks, None)), ("0.7*a4 alone", ref.forward(
            R.m, toks, ref.compose_cat([(L[0], 0.7)]))), ("a16 alone", R.logits(toks, 2)),
            ("-1.3*a16 alone", ref.forward(R.m, toks, ref.compose_cat([(L[2], -1.3)])))):
        d = rel_err(comp, other)
        print("# composition 0.7*a4 - 1.3*a16 vs %s: rel diff %.3g" % (name, d))
        tap(d > 1000 * TOL, "numpy: 0.7*a4 - 1.3*a16 differs from %s by >> tolerance (%.2g)"
            % (name, d))
    d = rel_err(R.logits(toks, 5), R.logits(toks, 6))
    print("# linear vs cat (0.6*a8 - 0.9*a8b): rel diff %.3g" % d)
    tap(d > 1000 * TOL, "numpy: linear mix differs from cat of the same terms (%.2g)" % d)
    d = min(rel_err(R.logits(toks, 5), R.logits(toks, k)) for k in (None, 1, 3))
    tap(d > 1000 * TOL, "numpy: linear mix differs from base and from each part (%.2g)" % d)


def main():
    os.chdir(ROOT)
    if not os.access(DUMP, os.X_OK):
        tap(False, "logits_dump binary exists at %s" % DUMP)
        return 1
    model_dir, lora_dirs = make_fixtures()
    R = Ref(model_dir, lora_dirs)
    rng = np.random.default_rng(77)
    seq = lambda n: rng.integers(0, VOCAB, n).tolist()  # noqa: E731
    s9, s11 = seq(9), seq(11)
    # Lengths from 1 to 23; base rows first, between and last; sets repeated adjacent (one
    # segment) and apart; the linear and cat mixes of the same terms on the same tokens.
    mixed = [(seq(1), None), (seq(7), 0), (s9, 4), (seq(4), 4), (seq(12), None), (seq(5), 1),
             (seq(23), 2), (s11, 5), (s11, 6), (seq(6), 3), (seq(3), 0), (seq(8), 8),
             (seq(5), 9), (seq(10), 10), (seq(2), 7), (s9, 0), (seq(17), None), (s9, 2)]
    got = check_batch("mixed step", R, model_dir, lora_dirs, mixed)
    if got is not None:
        # adapterd's own rows: the composition is not one of its parts, linear is not cat.
        d = min(rel_err(got[2], got[15]), rel_err(got[2], got[17]))
        tap(d > 1000 * TOL, "adapterd: composition row differs from its parts' rows (%.2g)" % d)
        d = rel_err(got[7], got[8])
        tap(d > 1000 * TOL, "adapterd: linear row differs from the cat row (%.2g)" % d)

    # The same kind of batch through the paged cache: chunked prefill over 4-token blocks,
    # then with prefill + two decode steps (every item in each call).
    longer = [(t if len(t) >= 3 else t + seq(3), k) for t, k in mixed]
    check_batch("chunked prefill (chunk 5, block 4)", R, model_dir, lora_dirs, mixed,
                ["--chunk", "5", "--block-tokens", "4"])
    check_batch("prefill + 2 decode steps (block 4)", R, model_dir, lora_dirs, longer,
                ["--steps", "--block-tokens", "4"])
    check_batch("chunk 3 + 2 decode steps (block 2)", R, model_dir, lora_dirs, longer[:9],
                ["--steps", "--chunk", "3", "--block-tokens", "2"])

    numpy_selfchecks(R, seq(14))

    # Refusals: linear needs equal ranks; a pool too small for the step.
    bad, p = run_dump(model_dir, lora_dirs, [("bad", "linear", [(0, 1.0), (2, 1.0)])],
                      [(seq(3), 0)])
    tap(bad is None and p.returncode != 0 and "Sanitizer" not in p.stderr,
        "linear mix of ranks 4 and 16 is refused (%s)" % p.stderr.strip()[-160:].replace("\n", " "))
    bad, p = run_dump(model_dir, lora_dirs, SETS, [(seq(20), 0), (seq(20), None)],
                      ["--block-tokens", "4", "--kv-budget", "1"])
    bad2, p2 = (None, p) if bad is not None else run_dump(
        model_dir, lora_dirs, SETS, [(seq(20), 0), (seq(20), None)],
        ["--block-tokens", "4", "--kv-budget", str(4 * 4 * 2 * 3 * 2 * 16 * 4)])
    tap(bad is None and bad2 is None and p2.returncode != 0 and "Sanitizer" not in p2.stderr,
        "KV pool too small is refused, not overrun (%s | %s)"
        % (p.stderr.strip()[-100:].replace("\n", " "), p2.stderr.strip()[-100:].replace("\n", " ")))

    print("1..%d" % n_test)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
