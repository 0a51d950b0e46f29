"""test_fuzz_smoke.py - the libFuzzer targets of tests/fuzz/ build and survive a short run.

Builds them with `make fuzz-build` (clang, ASan+UBSan, into $FUZZ_BUILD, default
build-fuzz/), then, for each target, checks that every committed seed runs clean (-runs=0
over tests/fuzz/corpus/<target>) and fuzzes for FUZZ_SMOKE_SECONDS (default 3) on a copy of
the seeds under tests/tmp/fuzz/: exit status 0, no sanitizer report, and libFuzzer's final
"Done N runs in S second(s)" line with N > 0. The long runs are `make fuzz` (docs/
OPERATIONS.md "Fuzzing"). Every check is skipped (TAP "# SKIP") only when clang or its
libFuzzer runtime (Debian libclang-rt-14-dev) is missing. Prints TAP; exits non-zero on a
failure. Run from anywhere with /usr/bin/python3.
"""

import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGETS = ["safetensors", "lora_config", "tokenizer", "jinja", "json_api", "http"]
FUZZ_BUILD = os.environ.get("FUZZ_BUILD", "build-fuzz")
SECONDS = int(os.environ.get("FUZZ_SMOKE_SECONDS", "3"))
TMP = os.path.join(ROOT, "tests", "tmp", "fuzz")
DONE_RE = re.compile(r"^Done (\d+) runs in (\d+) second", re.M)
BAD_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|"
                    r"SUMMARY: ")

n = 0
failed = False


def tap(ok, name, diag=""):
    global n, failed
    n += 1
    print("%s %d - %s" % ("ok" if ok else "not ok", n, name))
    if not ok:
        failed = True
        for line in diag.splitlines()[-25:]:
            print("# " + line)


def fuzzer_runtime():
    """'' when clang links a trivial fuzzer, else why not."""
    os.makedirs(TMP, exist_ok=True)
    src = os.path.join(TMP, "probe.c")
    with open(src, "w") as f:
        f.write("#include <stddef.h>\n#include <stdint.h>\n"
                "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)"
                "{ (void)d; (void)n; return 0; }\n")
    cc = os.environ.get("FUZZ_CC", "clang")
    if not shutil.which(cc):
        return "%s not found" % cc
    p = subprocess.run([cc, "-fsanitize=fuzzer,address,undefined", src, "-o",
                        os.path.join(TMP, "probe")], capture_output=True, text=True)
    return "" if p.returncode == 0 else "clang cannot link libFuzzer: " + p.stderr.strip()[:200]


def main():
    why = fuzzer_runtime()
    if why:
        tap(True, "fuzz targets build # SKIP " + why)
        for t in TARGETS:
            tap(True, "fuzz_%s seeds and %d s run # SKIP %s" % (t, SECONDS, why))
        return
    p = subprocess.run(["make", "-C", ROOT, "--no-print-directory", "-j%d" % (os.cpu_count() or 2),
                        "FUZZ_BUILD=" + FUZZ_BUILD, "fuzz-build"], capture_output=True, text=True)
    tap(p.returncode == 0, "fuzz targets build (make fuzz-build)", p.stdout + p.stderr)
    if p.returncode != 0:
        return
    for t in TARGETS:
        binary = os.path.join(ROOT, FUZZ_BUILD, "fuzz_" + t)
        seeds = os.path.join(ROOT, "tests", "fuzz", "corpus", t)
        work = os.path.join(TMP, t)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(seeds, os.path.join(work, "corpus"))
        os.makedirs(os.path.join(work, "crashes"))
        dict_args = []
        if os.path.exists(os.path.join(ROOT, "tests", "fuzz", t + ".dict")):
            dict_args = ["-dict=" + os.path.join(ROOT, "tests", "fuzz", t + ".dict")]
        # Targets find their fixtures (tokenizer.json, chat templates) from the repo root.
        s = subprocess.run([binary, "-runs=0", seeds], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        tap(s.returncode == 0 and not BAD_RE.search(s.stderr),
            "fuzz_%s: every committed seed runs clean" % t, s.stderr)
        r = subprocess.run([binary] + dict_args + [
            "-max_total_time=%d" % SECONDS, "-timeout=10", "-rss_limit_mb=4096",
            "-max_len=16384", "-print_final_stats=1",
            "-artifact_prefix=" + os.path.join(work, "crashes") + "/",
            os.path.join(work, "corpus")], cwd=ROOT, capture_output=True, text=True,
            timeout=SECONDS + 300)
        m = DONE_RE.search(r.stderr)
        ok = r.returncode == 0 and m is not None and int(m.group(1)) > 0 and \
            not BAD_RE.search(r.stderr) and not os.listdir(os.path.join(work, "crashes"))
        tap(ok, "fuzz_%s: %d s, 0 crashes" % (t, SECONDS), r.stderr)
        if m:
            print("# fuzz %s: %s execs in %s s" % (t, m.group(1), m.group(2)))


main()
print("1..%d" % n)
sys.exit(1 if failed else 0)
