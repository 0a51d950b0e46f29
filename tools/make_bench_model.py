"""make_bench_model.py OUT_DIR - the synthetic model and adapters that `make bench` measures.

Creates, once and deterministically (fixed seeds):
  OUT_DIR/model/           a Llama in HF format: hidden 1024, intermediate 2816, 12 layers,
                           16 heads / 4 KV heads, vocab 32000, untied, F32 (~800 MB). No
                           tokenizer: the benchmark feeds token ids directly.
  OUT_DIR/adapters/aNN/    32 PEFT LoRA adapters (a00..a31), rank 16, alpha 32, on all seven
                           projections of every layer (~14 MB each).
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


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: make_bench_model.py OUT_DIR\n")
        return 2
    out = sys.argv[1]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
