"""test_hotswap.py - repointing an alias (the hot swap) while clients use it.

Two versions of one adapter (different weights, so a fixed greedy prompt gives different
texts: checked first), an alias on version 1, four client threads sending greedy
completions on the alias in a loop (two of them streaming), and the main thread repointing
the alias v2 -> v1 -> v2 ... ten times over ~10 s. For every request: the time it was sent,
the time it finished, its status and text. Asserts: no request failed; every text is exactly
v1's or v2's reference (never a mix); every request sent after a swap's 200 and finished
before the next swap began used the swapped-to version (requests in flight across a swap may
use either). Prints TAP; exits non-zero if anything failed. Run with /usr/bin/python3.
"""

import http.client
import json
import os
import shutil
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import daemon  # noqa: E402

sys.path.insert(0, os.path.join(daemon.ROOT, "tools"))
import hf_fixtures  # noqa: E402

MODEL = "tiny"
ALIAS = "live"
N_CLIENTS = 4
N_SWAPS = 10
SWAP_PERIOD_S = 1.0
MAX_TOKENS = 8
PROMPTS = ["Once upon a time", "The capital of France is", "SELECT * FROM", "Hello", "1 2 3 4",
           "In the beginning", "def main():", "Dear Sir or Madam"]
WORK = os.path.join(daemon.TMP, "hotswap-%d" % os.getpid())


def multipart(parts, boundary="----hotswap-boundary-3f9a"):
    out = []
    for name, data in parts:
        out.append(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n"
                   % (boundary.encode(), name.encode()))
        out.append(data + b"\r\n")
    out.append(b"--%s--\r\n" % boundary.encode())
    return b"".join(out), "multipart/form-data; boundary=" + boundary


def upload(d, name, folder):
    with open(os.path.join(folder, "adapter_config.json"), "rb") as f:
        config = f.read()
    with open(os.path.join(folder, "adapter_model.safetensors"), "rb") as f:
        weights = f.read()
    body, ctype = multipart([("config", config), ("weights", weights)])
    st, _, data = d.request("POST", "/v1/adapters?name=" + name, body,
                            {"Content-Type": ctype})
    assert st == 201, "upload %s: %d %s" % (name, st, data[:300])
    return json.loads(data)


def completion_body(model, prompt, stream):
    return json.dumps({"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS,
                       "temperature": 0, "stream": stream})


def parse_completion(status, data, stream):
    """-> (text, error or None)."""
    if status != 200:
        return None, "status %d: %s" % (status, data[:300])
    if not stream:
        return json.loads(data)["choices"][0]["text"], None
    text, done = "", False
    for line in data.decode().split("\n"):
        if not line.startswith("data: "):
            continue
        payload = line[6:]
        if payload == "[DONE]":
            done = True
            continue
        chunk = json.loads(payload)
        if "error" in chunk:
            return None, "stream error chunk: %r" % chunk
        for c in chunk["choices"]:
            text += c["text"]
    if not done:
        return None, "stream without [DONE]"
    return text, None


def one(conn, model, prompt, stream):
    """One completion on a keep-alive connection -> (status, text, error)."""
    conn.request("POST", "/v1/completions", completion_body(model, prompt, stream),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    text, err = parse_completion(r.status, data, stream)
    return r.status, text, err


def reference(d, model, prompt):
    conn = http.client.HTTPConnection(d.host, d.port, timeout=30)
    try:
        st, text, err = one(conn, model, prompt, False)
        assert err is None, "%s: %s" % (model, err)
        st2, text2, err2 = one(conn, model, prompt, True)
        assert err2 is None and text2 == text, "%s: stream %r != plain %r (%s)" % (
            model, text2, text, err2)
        return text
    finally:
        conn.close()


class Client(threading.Thread):
    """Sends completions on the alias until stop is set; records every request."""

    def __init__(self, d, idx, prompt, stop):
        super().__init__(daemon=True)
        self.d, self.idx, self.prompt, self.stop = d, idx, prompt, stop
        self.records = []  # (t_send, t_done, status, text, error, stream)

    def run(self):
        conn = None
        i = 0
        while not self.stop.is_set():
            stream = self.idx >= 2 and i % 2 == 0 or self.idx == 3  # 2 and 3 stream (mostly)
            i += 1
            if conn is None:
                conn = http.client.HTTPConnection(self.d.host, self.d.port, timeout=30)
            t_send = time.monotonic()
            try:
                st, text, err = one(conn, ALIAS, self.prompt, stream)
            except (OSError, http.client.HTTPException, ValueError) as e:
                st, text, err = None, None, "%s: %s" % (type(e).__name__, e)
                conn.close()
                conn = None
            self.records.append((t_send, time.monotonic(), st, text, err, stream))
        if conn is not None:
            conn.close()


def put_alias(d, target):
    t_start = time.monotonic()
    st, _, data = d.request("PUT", "/v1/aliases/" + ALIAS, {"adapter": target})
    t_ok = time.monotonic()
    body = json.loads(data)
    assert st == 200 and body["adapter"] == target, "PUT alias -> %s: %d %r" % (target, st, body)
    return t_start, t_ok, target


def allowed_versions(rec, swaps):
    """The versions request rec may have used: the alias's target when it was sent (the
    last swap answered before), plus the target of any swap in flight while it ran."""
    t_send, t_done = rec[0], rec[1]
    current = None
    for t_start, t_ok, target in swaps:
        if t_ok <= t_send:
            current = target
    allowed = {current}
    for t_start, t_ok, target in swaps:
        if t_start < t_done and t_ok > t_send:
            allowed.add(target)
    return allowed


def main():
    tap = daemon.Tap()
    t0 = time.time()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    with open(os.path.join(daemon.tiny_model(), "config.json")) as f:
        cfg = json.load(f)
    for v, seed in (("v1", 101), ("v2", 202)):
        hf_fixtures.make_lora(os.path.join(WORK, v), cfg, seed=seed, r=4, alpha=8.0,
                              targets=["q_proj", "v_proj", "o_proj"])
    d = daemon.Daemon(["--model-name", MODEL], data_dir=os.path.join(WORK, "data"))
    try:
        a1 = upload(d, "swap", os.path.join(WORK, "v1"))
        a2 = upload(d, "swap", os.path.join(WORK, "v2"))
        tap.check(a1["id"] == "swap@1" and a2["id"] == "swap@2", "two versions uploaded",
                  (a1["id"], a2["id"]))
        V1, V2 = a1["id"], a2["id"]

        prompt, refs = None, None
        for p in PROMPTS:
            r1, r2 = reference(d, V1, p), reference(d, V2, p)
            if r1 != r2:
                prompt, refs = p, {V1: r1, V2: r2}
                break
        if not tap.check(prompt is not None, "a prompt whose greedy texts differ for v1 and v2",
                         "every prompt gave the same text"):
            return tap.done()
        print("# prompt %r: v1 %r, v2 %r" % (prompt, refs[V1], refs[V2]))

        swaps = [put_alias(d, V1)]
        tap.check(reference(d, ALIAS, prompt) == refs[V1], "the alias serves v1 before the swaps")
        stop = threading.Event()
        clients = [Client(d, i, prompt, stop) for i in range(N_CLIENTS)]
        for c in clients:
            c.start()
        time.sleep(SWAP_PERIOD_S / 2)
        swap_errors = []
        for i in range(N_SWAPS):
            target = V2 if i % 2 == 0 else V1
            try:
                swaps.append(put_alias(d, target))
            except (AssertionError, OSError, http.client.HTTPException) as e:
                swap_errors.append(str(e))
            time.sleep(SWAP_PERIOD_S)
        stop.set()
        for c in clients:
            c.join(60)
        tap.check(not any(c.is_alive() for c in clients), "client threads finished")
        tap.check(not swap_errors and len(swaps) == N_SWAPS + 1,
                  "%d swaps answered 200 with the new target" % N_SWAPS, swap_errors)

        records = [r for c in clients for r in c.records]
        failed = [r for r in records if r[2] != 200 or r[4] is not None]
        tap.check(len(records) > 50, "clients sent requests during the swaps",
                  "only %d requests" % len(records))
        tap.check(not failed, "every request answered 200 (no failure across swaps)",
                  "%d of %d failed, first: %r" % (len(failed), len(records),
                                                 failed[:3]))
        ok = [r for r in records if r[2] == 200 and r[4] is None]
        by_text = {V1: 0, V2: 0}
        mixed = []
        for r in ok:
            v = [k for k, t in refs.items() if t == r[3]]
            if v:
                by_text[v[0]] += 1
            else:
                mixed.append(r)
        tap.check(not mixed, "every text is v1's or v2's reference, never a mix",
                  "%d foreign texts, first: %r" % (len(mixed), mixed[:3]))

        strict = across = 0
        wrong = []
        for r in ok:
            allowed = allowed_versions(r, swaps)
            got = [k for k, t in refs.items() if t == r[3]]
            if len(allowed) == 1:
                strict += 1
            else:
                across += 1
            if got and got[0] not in allowed:
                wrong.append((r[0] - swaps[0][1], r[1] - swaps[0][1], got[0], sorted(allowed)))
        tap.check(not wrong, "every request sent after a swap's 200 uses the swapped-to version",
                  "%d wrong, first (t_send, t_done, got, allowed): %r" % (len(wrong), wrong[:5]))
        tap.check(strict >= len(ok) // 2 and by_text[V1] > 0 and by_text[V2] > 0,
                  "most requests fall between swaps and both versions served",
                  "strict %d of %d, v1 %d, v2 %d" % (strict, len(ok), by_text[V1], by_text[V2]))
        n_stream = sum(1 for r in records if r[5])
        print("# requests %d (%d streaming), failed %d, v1 %d, v2 %d, mixed %d" % (
            len(records), n_stream, len(failed), by_text[V1], by_text[V2], len(mixed)))
        print("# checked strictly (sent after a swap's 200, done before the next began) %d, "
              "in flight across a swap %d, swaps %d" % (strict, across, len(swaps) - 1))
        lat = sorted(r[1] - r[0] for r in ok)
        if lat:
            print("# latency p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
                1000 * lat[len(lat) // 2], 1000 * lat[int(len(lat) * 0.99)], 1000 * lat[-1]))
        final = swaps[-1][2]
        st, _, data = d.request("GET", "/v1/aliases/" + ALIAS)
        tap.check(st == 200 and json.loads(data)["adapter"] == final and
                  reference(d, ALIAS, prompt) == refs[final],
                  "after the swaps the alias serves its last target", (st, data))
    finally:
        rc = d.stop()
    tap.check(rc == 0, "daemon exits 0 on SIGTERM", "exit %r\n%s" % (rc, d.log()[-2000:]))
    print("# wall %.1f s" % (time.time() - t0))
    rc = tap.done()
    if rc == 0 and not os.environ.get("KEEP_TMP"):
        shutil.rmtree(WORK, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
