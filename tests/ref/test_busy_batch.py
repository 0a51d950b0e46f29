"""test_busy_batch.py - a sequence generated inside a busy heterogeneous batch vs alone.

Run from the repo root by /usr/bin/python3 (tests/run.sh). Builds a fixture model (vocab
32000 so the real Llama-2 tokenizer fits, GQA, 3 layers) and four PEFT LoRAs of ranks 4, 8,
16 (rsLoRA), 8 on different target modules, then runs $BUILD/tests/busy_batch: the REAL
engine (small max_batch_tokens so prompts are prefilled in chunks, KV blocks of 4
positions) generating one greedy, ignore_eos target sequence (an adapter composition) while
other requests - base, single adapters, cat and linear compositions, different prompt
lengths and max_tokens - are submitted before it and after its 3rd and 10th tokens, and one
is cancelled, so the batch around it changes every few steps. busy_batch records the logits
of every step (want_logits) and the ids of every request.

numpy (tests/ref/ref_llama.py, float64) then computes the target ALONE, teacher-forced on
prompt + generated ids, and checks at every step:

    max|engine - ref| / max|ref| <= 1e-4,   and   id == argmax(ref)

and the same for every other request (so a sequence that was preempted and recomputed, or
that joined mid-way, is checked too, whichever the engine picked).

Three configurations: (1) no preemption (generous KV budget); (2) a KV budget so tight that
sequences are preempted and recomputed (engine stats n_preempted > 0 is checked); (3) a long
target prompt prefilled in many chunks while the others decode. Prints TAP,
"# max rel err busy-batch <config> = <value>" and the number of distinct batch compositions
(sets of other running sequences) the target saw.
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
TOOL = os.path.join(BUILD if os.path.isabs(BUILD) else os.path.join(ROOT, BUILD),
                    "tests", "busy_batch")
TMP = os.path.join(ROOT, "tests", "tmp", "ref", "busy_batch")
TOKJSON = os.path.join(ROOT, "node_modules", "@lenml", "tokenizer-llama2", "models",
                       "tokenizer.json")
VOCAB = 32000
CFG = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 160,
       "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
       "max_position_embeddings": 256}
# KV bytes per position: K and V, every layer and kv head, f32.
KV_POS_BYTES = 2 * 3 * 2 * 16 * 4
N_TARGET = 24

# Adapter sets (index = position): (kind, [(lora index, weight)]); LoRAs a4, a8, a16, a8b.
SETS = [
    ("cat", [(0, 1.0)]),                          # 0 a4
    ("cat", [(1, 1.0)]),                          # 1 a8
    ("cat", [(2, 1.0)]),                          # 2 a16 rslora
    ("cat", [(0, 0.7), (2, -1.3)]),               # 3 0.7*a4 - 1.3*a16
    ("linear", [(1, 0.6), (3, -0.9)]),            # 4 linear 0.6*a8 - 0.9*a8b
    ("cat", [(3, -0.5)]),                         # 5 -0.5*a8b
    ("cat", [(0, 0.5), (1, 1.0), (2, -0.8), (3, 0.3)]),  # 6 four terms
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


def make_fixtures():
    shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP)
    P = lambda *a: os.path.join(TMP, *a)  # noqa: E731
    c = hf.make_llama(P("model"), CFG, seed=51, tie=True)
    hf.make_lora(P("a4"), c, seed=61, r=4, alpha=8, targets=["q_proj", "v_proj"])
    hf.make_lora(P("a8"), c, seed=62, r=8, alpha=16, targets=["o_proj", "down_proj"])
    hf.make_lora(P("a16"), c, seed=63, r=16, alpha=32, targets=hf.MODULES, rslora=True)
    hf.make_lora(P("a8b"), c, seed=64, r=8, alpha=8, targets=["q_proj", "o_proj", "down_proj"],
                 layers=[0, 2])
    return P("model"), [P(n) for n in ("a4", "a8", "a16", "a8b")]


def ids_arg(toks, k):
    return ",".join(str(int(t)) for t in toks) + ("" if k is None else "@%d" % k)


def run_busy(model_dir, lora_dirs, target, others, cancels, params):
    """target: (max, tokens, set); others: [(when, max, tokens, set)]; cancels: [(t, r)].
    -> (report dict, seqs, CompletedProcess); seqs: per request (target first) a tuple
    (finish, ids, logits (n_gen, V)), or None when the run failed."""
    out = os.path.join(TMP, "target.f32")
    if os.path.exists(out):
        os.remove(out)
    cmd = [TOOL, "--model", model_dir, "--tokenizer", TOKJSON, "--out", out]
    for d in lora_dirs:
        cmd += ["--lora", d]
    for kind, terms in SETS:
        cmd += ["--linear" if kind == "linear" else "--set",
                ",".join("%d:%r" % (i, float(w)) for i, w in terms)]
    for key, v in params.items():
        cmd += ["--" + key, str(v)]
    cmd += ["--target", "%d:%s" % (target[0], ids_arg(target[1], target[2]))]
    for when, mx, toks, k in others:
        cmd += ["--req", "%s:%d:%s" % (when, mx, ids_arg(toks, k))]
    for t, r in cancels:
        cmd += ["--cancel", "%d:%d" % (t, r)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    rep, seqs = {}, []
    for line in p.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == "seq":
            seqs.append((parts[2], [int(x) for x in parts[4:4 + int(parts[3])]]))
        elif parts:
            rep[parts[0]] = parts[1:]
    if p.returncode != 0 or not os.path.exists(out) or len(seqs) != 1 + len(others):
        return rep, None, p
    data = np.fromfile(out, dtype="<f4")
    total = sum(len(ids) for _, ids in seqs) * VOCAB
    if data.size != total:
        diag("busy_batch wrote %d floats, expected %d" % (data.size, total))
        return rep, None, p
    res, at = [], 0
    for finish, ids in seqs:
        n = len(ids) * VOCAB
        res.append((finish, ids, data[at:at + n].reshape(len(ids), VOCAB)))
        at += n
    return rep, res, p


class Ref:
    def __init__(self, model_dir, lora_dirs):
        self.m = ref.load_model(model_dir)
        self.loras = [ref.load_lora(d) for d in lora_dirs]

    def adapter(self, k):
        if k is None:
            return None
        kind, terms = SETS[k]
        t = [(self.loras[i], w) for i, w in terms]
        return ref.mix_linear(t) if kind == "linear" else ref.compose_cat(t)

    def teacher_forced(self, prompt, ids, k):
        """Logits (n_gen, V) the target alone would sample step j from: the rows at
        positions n_prompt-1 .. n_prompt+n_gen-2 of prompt + ids[:-1]."""
        full = ref.forward(self.m, list(prompt) + list(ids[:-1]), self.adapter(k))
        return full[len(prompt) - 1:]


def step_errors(R, prompt, k, ids, got):
    """Per-step relative errors of got (n, V) against numpy alone, and the steps whose id is
    not the numpy argmax."""
    want = R.teacher_forced(prompt, ids, k)
    errs = [float(np.max(np.abs(got[j].astype(np.float64) - want[j])) / np.max(np.abs(want[j])))
            if np.all(np.isfinite(got[j])) else float("inf") for j in range(len(ids))]
    am = want.argmax(axis=-1)
    return errs, [j for j in range(len(ids)) if ids[j] != am[j]]


def check_others(name, R, others, cancels, got):
    """Every other request against numpy alone; its token count against its finish."""
    worst, n_bad_ids, n_bad_len = 0.0, 0, 0
    cancelled = {1 + r for _, r in cancels}
    for i, (when, mx, prompt, k) in enumerate(others, start=1):
        finish, ids, logits = got[i]
        if finish != ("cancelled" if i in cancelled and len(ids) < mx else "length") or \
                (finish == "length" and len(ids) != mx) or len(ids) > mx:
            n_bad_len += 1
            diag("request %d: finish %s with %d of %d tokens" % (i, finish, len(ids), mx))
        if ids:
            errs, bad = step_errors(R, prompt, k, ids, logits)
            worst = max(worst, max(errs))
            n_bad_ids += len(bad)
    print("# max rel err busy-batch %s others = %.3g" % (name, worst), flush=True)
    tap(n_bad_len == 0, "%s: other requests end by length (or cancel) with max_tokens ids"
        % name)
    tap(worst <= TOL and n_bad_ids == 0,
        "%s: every other request's logits match numpy alone (%.2g), ids are its argmax"
        % (name, worst))


def check_config(name, R, model_dir, lora_dirs, target, others, cancels, params,
                 want_preempt=False):
    rep, got, p = run_busy(model_dir, lora_dirs, target, others, cancels, params)
    if p.returncode != 0 or got is None:
        diag("busy_batch failed (exit %d): %s" % (p.returncode, p.stderr.strip()[-1200:]))
        diag(p.stdout.strip()[-600:])
        tap(False, "%s: busy_batch runs, every request ends without error" % name)
        return
    tap(True, "%s: busy_batch runs, every request ends without error (%s)"
        % (name, " ".join(rep.get("others", []))))
    finish, ids, logits = got[0]
    tap(len(ids) == target[0] and finish == "length",
        "%s: target generated %d tokens, finish %s" % (name, len(ids), finish))
    if not ids:
        return
    errs, bad = step_errors(R, target[1], target[2], ids, logits)
    worst = max(errs)
    print("# max rel err busy-batch %s = %.3g" % (name, worst), flush=True)
    if worst > TOL:
        diag("per step: " + " ".join("%.2g" % e for e in errs))
    tap(worst <= TOL, "%s: target logits at every step match numpy alone (%.2g <= %g)"
        % (name, worst, TOL))
    tap(not bad, "%s: every generated id is the numpy argmax%s"
        % (name, "" if not bad else " (differs at steps %s)" % bad[:8]))
    check_others(name, R, others, cancels, got)
    dr = int(rep.get("distinct_running", ["0"])[0])
    print("# distinct batch compositions busy-batch %s = %d (running others per step: %s; "
          "alive: %s)" % (name, dr, " ".join(rep.get("running", [])),
                          " ".join(rep.get("alive", []))), flush=True)
    st = rep.get("stats", [])
    rows = int(st[st.index("rows") + 1]) if "rows" in st else 0
    prompts = [target[1]] + [o[2] for o in others]
    once = sum(len(pr) + len(g[1]) - 1 for pr, g in zip(prompts, got) if g[1])
    print("# engine stats %s: %s; rows beyond one pass per token (recomputed after "
          "preemption, or run for a cancelled request) = %d" % (name, " ".join(st), rows - once),
          flush=True)
    tap(dr >= 4, "%s: the batch around the target changed (%d distinct compositions >= 4)"
        % (name, dr))
    if want_preempt:
        n_pre = int(st[st.index("preempted") + 1]) if "preempted" in st else 0
        tap(n_pre > 0, "%s: sequences were preempted (n_preempted %d > 0)" % (name, n_pre))


def main():
    os.chdir(ROOT)
    if not os.access(TOOL, os.X_OK):
        tap(False, "busy_batch binary exists at %s" % TOOL)
        return 1
    if not os.path.exists(TOKJSON):
        tap(False, "tokenizer %s exists (npm ci)" % TOKJSON)
        return 1
    model_dir, lora_dirs = make_fixtures()
    R = Ref(model_dir, lora_dirs)
    rng = np.random.default_rng(99)
    seq = lambda n: rng.integers(3, VOCAB, n).tolist()  # noqa: E731

    # Others: (when, max_tokens, prompt, set). "before" = submitted before the target;
    # 3 / 10 = once the target has 3 / 10 tokens. --cancel 12:1 cancels the 2nd one.
    others = [("before", 6, seq(13), None), ("before", 20, seq(5), 1),
              ("before", 3, seq(30), 4), ("before", 9, seq(8), 6),
              (3, 5, seq(7), 2), (3, 12, seq(20), None), (3, 9, seq(4), 6),
              (3, 2, seq(9), 5),
              (10, 4, seq(11), 0), (10, 8, seq(6), 5), (10, 15, seq(25), 4),
              (10, 6, seq(3), 3), (10, 1, seq(14), None)]
    cancels = [(12, 1)]

    check_config("no-preemption", R, model_dir, lora_dirs, (N_TARGET, seq(10), 3), others,
                 cancels, {"max-batch-tokens": 12, "kv-block-tokens": 4,
                           "kv-budget": 4096 * KV_POS_BYTES})

    # Tight: the target alone needs 9 blocks of 4 (10 + 24 positions); 14 blocks for all.
    small = [(w, min(mx, 10), t[:12], k) for w, mx, t, k in others]
    check_config("preemption", R, model_dir, lora_dirs, (N_TARGET, seq(10), 4), small,
                 cancels, {"max-batch-tokens": 12, "kv-block-tokens": 4,
                           "kv-budget": 14 * 4 * KV_POS_BYTES}, want_preempt=True)

    check_config("chunked-long-prompt", R, model_dir, lora_dirs, (N_TARGET, seq(120), 6),
                 others, cancels, {"max-batch-tokens": 16, "kv-block-tokens": 4,
                                   "kv-budget": 4096 * KV_POS_BYTES})

    print("1..%d" % n_test)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
