"""test_hostile_files.py - RELIABILITY.md 2.2 (F1-F12, F14) over real HTTP on data/model.

Generates the hostile corpus with tools/gen_hostile_corpus.py into tests/tmp/, starts
$BUILD/adapterd on data/model with a fresh data dir, uploads every case as multipart and
checks the documented answer: 422 with error.reason from the manifest, or 201 for the cases
the rules accept. Then: the daemon still serves (healthz, a base completion, a completion
on an accepted adapter), F8's header bloat is answered quickly, F12 (a smaller version of
test_hotswap.py: alias swaps under concurrent requests never mix outputs), F14 (an adapter
declaring more than --adapter-cache-bytes: 422 exceeds_cache; a Content-Length over
--max-upload-bytes: 413 before the body), a blob changed on disk (503, state broken;
test_store_http.py checks the same in more detail) and `adapterd import` of two cases
(non-zero exit naming the reason). Prints TAP; exits non-zero if anything failed.
Run with /usr/bin/python3 (numpy).
"""

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import daemon  # noqa: E402
from daemon import read_response  # noqa: E402

sys.path.insert(0, os.path.join(daemon.ROOT, "tools"))
import gen_hostile_corpus as gen  # noqa: E402
import hf_fixtures  # noqa: E402

MODEL_DIR = os.path.join(daemon.ROOT, "data", "model")
WORK = os.path.join(daemon.TMP, "hostile-%d" % os.getpid())
CORPUS = os.path.join(WORK, "corpus")
CACHE_BYTES = 1 << 20  # 1 MiB: the F14 adapter below declares ~2.4 MB of f32 weights
MAX_UPLOAD = 20000000  # over the corpus's largest file (10 MB of metadata)
PROMPT = "Once upon a time"


def multipart(parts, boundary="----adapterd-hostile-5e1b"):
    out = []
    for name, data in parts:
        out.append(b"--" + boundary.encode() + b"\r\n")
        out.append(('Content-Disposition: form-data; name="%s"; filename="%s"\r\n'
                    % (name, name)).encode())
        out.append(b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    out.append(b"--" + boundary.encode() + b"--\r\n")
    return b"".join(out), "multipart/form-data; boundary=" + boundary


def upload_dir(d, name, folder, timeout=60.0):
    """POST the folder's two files as NAME. -> (status, parsed body, seconds)."""
    with open(os.path.join(folder, "adapter_config.json"), "rb") as f:
        cfg = f.read()
    with open(os.path.join(folder, "adapter_model.safetensors"), "rb") as f:
        wts = f.read()
    body, ctype = multipart([("config", cfg), ("weights", wts)])
    conn = http.client.HTTPConnection(d.host, d.port, timeout=timeout)
    try:
        t0 = time.time()
        conn.request("POST", "/v1/adapters?name=" + urllib.parse.quote(name), body=body,
                     headers={"Content-Type": ctype})
        r = conn.getresponse()
        data = r.read()
        dt = time.time() - t0
    finally:
        conn.close()
    try:
        return r.status, json.loads(data), dt
    except ValueError:
        return r.status, data, dt


def call(d, method, path, body=None):
    st, _, data = d.request(method, path, body, timeout=30.0)
    try:
        return st, json.loads(data)
    except ValueError:
        return st, data


def text_of(d, model):
    st, b = call(d, "POST", "/v1/completions", {"model": model, "prompt": PROMPT,
                                                "temperature": 0, "max_tokens": 8})
    assert st == 200, "completion on %s: %d %r" % (model, st, b)
    return b["choices"][0]["text"]


# ---- the corpus ---------------------------------------------------------------------------

def t_corpus(d, S, tap):
    """One TAP line per F test: every case of it answered as the manifest says."""
    by_test = {}
    for c in S.manifest:
        by_test.setdefault(c["test"], []).append(c)
    for test in sorted(by_test, key=lambda t: int(t[1:])):
        fails = []
        for c in by_test[test]:
            name = c["name"].replace("_", "-")
            st, b, dt = upload_dir(d, name, os.path.join(CORPUS, c["name"]))
            S.times[c["name"]] = dt
            err = b.get("error", {}) if isinstance(b, dict) else {}
            if c["expect"] == 201:
                if st != 201:
                    fails.append("%s: %d %r (want 201)" % (c["name"], st, b))
                else:
                    S.accepted.append(name)
            elif st != 422 or err.get("reason") != c["reason"]:
                fails.append("%s: %d reason %r (want 422 %s): %s"
                             % (c["name"], st, err.get("reason"), c["reason"],
                                str(err.get("message", b))[:200]))
        tap.check(not fails, "%s: %d cases answered as documented (422 + reason, or 201)"
                  % (test, len(by_test[test])), "\n".join(fails))


def t_still_serving(d, S):
    st, _ = call(d, "GET", "/healthz")
    assert st == 200, st
    text_of(d, "tiny")
    assert "f11-bf16" in S.accepted, S.accepted
    t1 = text_of(d, "f11-bf16")
    t2 = text_of(d, "f11-f16")
    assert t1 and t2
    for n in ("f1-short", "f8-bloat", "f11-nan"):  # refused uploads left nothing behind
        st, b = call(d, "GET", "/v1/adapters/" + n)
        assert st == 404, (n, st, b)
    assert d.alive()


def t_f8_time(d, S):
    dt = S.times["f8_bloat"]
    size = os.path.getsize(os.path.join(CORPUS, "f8_bloat", "adapter_model.safetensors"))
    print("# F8: 100,000-entry header (%.1f MB) uploaded and refused in %.0f ms "
          "(upload + parse; the reader alone: test_safetensors f8)" % (size / 1e6, dt * 1e3))
    assert dt < 3.0, dt


def t_metadata_inert(d, S):
    # The chat_template in f7_template's metadata is stored as bytes, never rendered: the
    # adapter serves like any other and its object carries no template.
    st, b = call(d, "GET", "/v1/adapters/f7-template")
    assert st == 200 and "chat_template" not in json.dumps(b), (st, b)
    text_of(d, "f7-template")


# ---- F12: hot swap --------------------------------------------------------------------------

def t_hot_swap(d, S):
    with open(os.path.join(MODEL_DIR, "config.json")) as f:
        cfg = json.load(f)
    texts = {}
    for v, seed in (("swap-a", 11), ("swap-b", 12)):
        path = os.path.join(WORK, v)
        hf_fixtures.make_lora(path, cfg, seed=seed, r=4, alpha=8.0,
                              targets=list(hf_fixtures.MODULES), strength=4.0)
        st, b, _ = upload_dir(d, "swap", path)
        assert st == 201, (st, b)
        texts[b["id"]] = text_of(d, b["id"])
    assert texts["swap@1"] != texts["swap@2"], "the two versions must answer differently"
    st, b = call(d, "PUT", "/v1/aliases/live", {"adapter": "swap@1"})
    assert st == 200, (st, b)
    results, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            st, b = call(d, "POST", "/v1/completions", {"model": "live", "prompt": PROMPT,
                                                        "temperature": 0, "max_tokens": 8})
            results.append((st, b["choices"][0]["text"] if st == 200 else b))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    n_swaps = 0
    try:
        while len(results) < 300 and n_swaps < 200:
            st, b = call(d, "PUT", "/v1/aliases/live",
                         {"adapter": "swap@%d" % (2 - n_swaps % 2)})
            assert st == 200, (st, b)
            n_swaps += 1
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
    bad = [r for r in results if r[0] != 200 or r[1] not in texts.values()]
    seen = {r[1] for r in results}
    print("# F12: %d requests over %d swaps; mismatched outputs %d; versions seen %d"
          % (len(results), n_swaps, len(bad), len(seen & set(texts.values()))))
    assert not bad, bad[:3]
    assert len(seen) == 2, "both versions should have served"


# ---- F14 and a changed blob ---------------------------------------------------------------

def t_f14_cache(d, S):
    with open(os.path.join(MODEL_DIR, "config.json")) as f:
        cfg = json.load(f)
    path = os.path.join(WORK, "f14-big")
    hf_fixtures.make_lora(path, cfg, seed=3, r=32, alpha=32.0, targets=list(hf_fixtures.MODULES))
    st, b, _ = upload_dir(d, "f14-big", path)
    assert st == 422 and b["error"]["code"] == "adapter_too_large", (st, b)
    assert b["error"]["reason"] == "exceeds_cache", b
    # Content-Length over --max-upload-bytes: 413 from the head alone, no body sent.
    s = d.connect()
    try:
        s.sendall(("POST /v1/adapters?name=huge HTTP/1.1\r\nHost: t\r\nContent-Type: "
                   "multipart/form-data; boundary=x\r\nContent-Length: %d\r\n\r\n"
                   % (MAX_UPLOAD * 2)).encode())
        r = read_response(s)
        assert r is not None and r[0] == 413, r
        assert json.loads(r[2])["error"]["code"] == "too_large", r
    finally:
        s.close()


def t_changed_blob(d, S):
    st, b, _ = upload_dir(d, "victim", os.path.join(CORPUS, "f2_trailing_pad"))
    assert st == 201, (st, b)
    blob = os.path.join(d.data_dir or os.path.join(d.work, "data"), "blobs", b["sha256"])
    with open(blob, "r+b") as f:  # the daemon never loaded it: the next load verifies
        f.seek(-3, 2)
        x = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([x[0] ^ 0x01]))
    st, b = call(d, "POST", "/v1/completions", {"model": "victim", "prompt": PROMPT,
                                                "max_tokens": 2})
    assert st == 503 and b["error"]["code"] == "adapter_unavailable", (st, b)
    deadline = time.time() + 3
    while time.time() < deadline:
        st, b = call(d, "GET", "/v1/adapters/victim@1")
        if b.get("state") == "broken":
            break
        time.sleep(0.05)
    assert b.get("state") == "broken" and "hash_mismatch" in b.get("reason", ""), b


# ---- the CLI ------------------------------------------------------------------------------

def t_cli_import(S):
    data = os.path.join(WORK, "cli-data")
    for case in ("f4_overlap", "f9_r_1024", "f11_nan"):
        want = next(c["reason"] for c in S.manifest if c["name"] == case)
        p = subprocess.run([daemon.binary(), "import", os.path.join(CORPUS, case), "--name",
                            case.replace("_", "-"), "--data-dir", data, "--model", MODEL_DIR],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0, (case, p.returncode, p.stdout)
        assert ": %s: " % want in p.stderr, (case, want, p.stderr[-400:])
    p = subprocess.run([daemon.binary(), "import", os.path.join(CORPUS, "f4_unsorted"), "--name",
                        "ok", "--data-dir", data, "--model", MODEL_DIR],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-400:]


class State:
    manifest = []
    times = {}
    accepted = []


def main():
    tap = daemon.Tap()
    S = State()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    S.manifest = gen.generate(CORPUS, MODEL_DIR)
    tap.check(len(S.manifest) >= 60, "corpus generated: %d cases" % len(S.manifest))
    with daemon.Daemon(["--model-name", "tiny", "--adapter-cache-bytes", str(CACHE_BYTES),
                        "--max-upload-bytes", str(MAX_UPLOAD)], model=MODEL_DIR) as d:
        t_corpus(d, S, tap)
        tap.run("daemon keeps serving after every hostile upload", t_still_serving, d, S)
        tap.run("F8: header bloat refused quickly", t_f8_time, d, S)
        tap.run("F7: metadata template stored inert", t_metadata_inert, d, S)
        tap.run("F12: alias hot swaps under load never mix outputs", t_hot_swap, d, S)
        tap.run("F14: over the cache 422 exceeds_cache; over the upload cap 413 before the body",
                t_f14_cache, d, S)
        tap.run("a blob changed on disk: 503 adapter_unavailable, state broken (hash_mismatch)",
                t_changed_blob, d, S)
        tap.check(d.alive(), "daemon alive at the end")
    tap.run("adapterd import: refused cases exit non-zero naming the reason", t_cli_import, S)
    rc = tap.done()
    if rc == 0:
        shutil.rmtree(WORK, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
