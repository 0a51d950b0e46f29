"""make_bench_model.py OUT_DIR [--store-adapters] [--zipf-adapters N]
The synthetic model and adapters that `make bench` measures.

Creates, once and deterministically (fixed seeds):
  OUT_DIR/model/           a Llama in HF format: hidden 1024, intermediate 2816, 12 layers,
                           16 heads / 4 KV heads, vocab 32000, untied, F32 (~800 MB). No
                           tokenizer: the benchmark feeds token ids directly.
  OUT_DIR/adapters/aNN/    32 PEFT LoRA adapters (a00..a31), rank 16, alpha 32, on all seven
                           projections of every layer (~14 MB each).
With --store-adapters, also (for tests/tools/bench_store_load.c):
  OUT_DIR/store-adapters/rR-{a,b}/  two adapters per rank R in 8, 16, 64, alpha 2R, on all
                           seven projections, BF16 as PEFT saves them (~3, 6, 25 MB each).
With --zipf-adapters N, also (for tests/tools/bench_zipf.c):
  OUT_DIR/zipf-adapters/zNNNN/  N adapters z0000.., rank 8, alpha 16, on q_proj and v_proj,
                           BF16, each from its own seed (~0.6 MB each).
Anything that already exists is left alone. Each folder is written under a temporary name
and renamed, so an interrupted run never leaves a half-written folder that later runs would
take as done. Uses tools/hf_fixtures.py's writers (numpy only).
"""

import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hf_fixtures as hf  # noqa: E402

CONFIG = {
    "vocab_size": 32000,
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "_name_or_path": "adapterd-bench-llama",
}
MODEL_SEED = 20240701
N_ADAPTERS = 32
RANK = 16
ALPHA = 32
STORE_RANKS = (8, 16, 64)
ZIPF_RANK = 8


def build(final, make):
    """Run make(tmp_dir) and rename tmp_dir to final; skip when final is complete."""
    marker = ("config.json", "adapter_config.json")
    if any(os.path.exists(os.path.join(final, m)) for m in marker):
        return False
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    make(tmp)
    if os.path.exists(final):  # a leftover folder without its config: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    return True


def make_store_adapters(out, cfg):
    """Two BF16 adapters per rank of STORE_RANKS; returns how many were made."""
    made = 0
    for ri, r in enumerate(STORE_RANKS):
        for k, tag in enumerate("ab"):
            d = os.path.join(out, "store-adapters", "r%d-%s" % (r, tag))
            made += build(d, lambda t, r=r, seed=5000 + 10 * ri + k: hf.make_lora(
                t, cfg, seed=seed, r=r, alpha=2 * r, targets=hf.MODULES, dtype="BF16",
                strength=0.3, base_name=CONFIG["_name_or_path"]))
    return made


def make_zipf_adapters(out, cfg, n):
    """n small BF16 adapters (rank 8, q_proj and v_proj), each with its own contents."""
    made = 0
    for i in range(n):
        d = os.path.join(out, "zipf-adapters", "z%04d" % i)
        made += build(d, lambda t, i=i: hf.make_lora(
            t, cfg, seed=100000 + i, r=ZIPF_RANK, alpha=2 * ZIPF_RANK,
            targets=("q_proj", "v_proj"), dtype="BF16", strength=0.3,
            base_name=CONFIG["_name_or_path"]))
    return made


def parse_args(argv):
    """-> (out, store_adapters, n_zipf) or None for a usage error."""
    if len(argv) < 2 or argv[1].startswith("-"):
        return None
    out, store, n_zipf, i = argv[1], False, 0, 2
    while i < len(argv):
        if argv[i] == "--store-adapters":
            store = True
        elif argv[i] == "--zipf-adapters" and i + 1 < len(argv) and argv[i + 1].isdigit():
            n_zipf = int(argv[i + 1])
            i += 1
        else:
            return None
        i += 1
    return out, store, n_zipf


def main():
    args = parse_args(sys.argv)
    if args is None:
        sys.stderr.write("usage: make_bench_model.py OUT_DIR [--store-adapters] "
                         "[--zipf-adapters N]\n")
        return 2
    out, store, n_zipf = args
    os.makedirs(os.path.join(out, "adapters"), exist_ok=True)
    t0 = time.time()
    model_dir = os.path.join(out, "model")
    cfg = hf.full_config(CONFIG, "F32")
    if build(model_dir, lambda d: hf.make_llama(d, CONFIG, seed=MODEL_SEED, dtype="F32")):
        print("made:   %s (%.0f s)" % (model_dir, time.time() - t0))
    made = 0
    for i in range(N_ADAPTERS):
        d = os.path.join(out, "adapters", "a%02d" % i)
        made += build(d, lambda t, i=i: hf.make_lora(
            t, cfg, seed=1000 + i, r=RANK, alpha=ALPHA, targets=hf.MODULES,
            strength=0.3, base_name=CONFIG["_name_or_path"]))
    if made:
        print("made:   %d adapters under %s/adapters (%.0f s total)" % (made, out, time.time() - t0))
    if store:
        os.makedirs(os.path.join(out, "store-adapters"), exist_ok=True)
        made = make_store_adapters(out, cfg)
        if made:
            print("made:   %d adapters under %s/store-adapters (%.0f s total)"
                  % (made, out, time.time() - t0))
    if n_zipf:
        os.makedirs(os.path.join(out, "zipf-adapters"), exist_ok=True)
        made = make_zipf_adapters(out, cfg, n_zipf)
        if made:
            print("made:   %d adapters under %s/zipf-adapters (%.0f s total)"
                  % (made, out, time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
