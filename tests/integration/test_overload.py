"""test_overload.py - RELIABILITY.md 4.2 O1-O5 and O11 against a live daemon on data/model.

Daemon 1 (--max-seqs 4 --max-queue 8 --max-write-buffer-bytes 65536, demo adapters from
data/adapters) takes, in order:
  O1  load within capacity (8 clients, fewer than seqs + queue): all 200;
  O2  load far above capacity (64 clients, 10 s): only 200 or 429 + Retry-After, 5xx = 0,
      adapterd_waiting_sequences never above the queue cap (sampled from /metrics);
  O3  (scaled-down soak) after O1 + O2 the daemon is idle again (running, waiting,
      kv_blocks_used 0), serves the pre-load reference output, fd count flat, RSS growth
      small;
  O5  a stalled SSE reader (tiny receive buffer, never reads) is dropped once its write
      buffer passes the cap: its sequence is cancelled, the stream never reached [DONE];
  O4  1,000 streamed completions on demo adapters closed right after the first token
      (16 at a time, a new request at once; textgen #5939): no KV block, adapter pin
      (in_use) or fd leaks, and cancel latency measured on 20 single streams.
Daemon 2 (default engine limits, so 32 requests share one batch):
  O11 32 concurrent requests (distinct prompts, seeds, adapters none / demo-a / demo-b / a
      composition) each equal their single-request reference.
O6 (drain), O7 (startup), O8-O9 (adapter cache) are in test_ops.py, test_http.py and
test_store_http.py. Every O test prints "# O<n> ..." figure lines. Prints TAP; exits
non-zero if anything failed. Run with /usr/bin/python3.
"""

import http.client
import json
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import daemon  # noqa: E402

MODEL_DIR = os.path.join(daemon.ROOT, "data", "model")
ADAPTERS_DIR = os.path.join(daemon.ROOT, "data", "adapters")
MODEL = "tiny"
MAX_SEQS, MAX_QUEUE, WBUF = 4, 8, 65536
PROMPT = "Once upon a time"


# ---- observing the daemon ------------------------------------------------------------------


def idle_state(m):
    return (m["adapterd_running_sequences"], m["adapterd_waiting_sequences"],
            m["adapterd_kv_blocks_used"])


def wait_idle(d, timeout=10.0):
    """Poll /metrics until running, waiting and kv_blocks_used are all 0 -> seconds taken
    (AssertionError naming the last values after timeout)."""
    t0 = time.time()
    while True:
        s = idle_state(daemon.metrics(d))
        if s == (0, 0, 0):
            return time.time() - t0
        if time.time() - t0 > timeout:
            raise AssertionError("not idle after %.0f s: running/waiting/kv_blocks_used %r"
                                 % (timeout, s))
        time.sleep(0.005)




def in_use(d, name):
    st, _, body = d.request("GET", "/v1/adapters/" + name)
    assert st == 200, "GET /v1/adapters/%s: %d %r" % (name, st, body[:200])
    return sum(v["in_use"] for v in json.loads(body)["data"])


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100.0 * len(s)))] if s else float("nan")


def complete(d, body, timeout=30):
    st, _, data = d.request("POST", "/v1/completions", body, timeout=timeout)
    assert st == 200, "completion: %d %r" % (st, data[:300])
    ch = json.loads(data)["choices"][0]
    return ch["text"], ch.get("token_ids")


def ref_body(adapter=None):
    b = {"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    if adapter:
        b["adapter"] = adapter
    return b


# ---- load ----------------------------------------------------------------------------------

class Load:
    """`clients` threads sending completions back to back on keep-alive connections for
    `seconds`, while a sampler reads /metrics and the daemon's RSS every 50 ms."""

    def __init__(self, d, clients, seconds, max_tokens=16):
        self.d, self.clients, self.seconds, self.max_tokens = d, clients, seconds, max_tokens
        self.lock = threading.Lock()
        self.status = {}
        self.no_retry_after = 0
        self.conn_errors = []
        self.lat_ok = []
        self.max_waiting = self.max_running = 0
        self.rss_max = 0
        self.samples = 0

    def worker(self, i, stop):
        body = json.dumps({"model": MODEL, "prompt": "Client %d says" % i,
                           "max_tokens": self.max_tokens, "temperature": 0,
                           "ignore_eos": True})
        conn = None
        while time.time() < stop:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.d.host, self.d.port, timeout=30)
                t0 = time.time()
                conn.request("POST", "/v1/completions", body=body,
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                dt = time.time() - t0
                ra = r.getheader("Retry-After")
                with self.lock:
                    self.status[r.status] = self.status.get(r.status, 0) + 1
                    if r.status == 200:
                        self.lat_ok.append(dt)
                    if r.status == 429 and not (ra and ra.isdigit() and int(ra) >= 1):
                        self.no_retry_after += 1
                if r.will_close:
                    conn.close()
                    conn = None
                if r.status == 429:
                    time.sleep(0.02)  # an impatient client: far below the Retry-After
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.conn_errors.append(repr(e))
                if conn:
                    conn.close()
                conn = None
                time.sleep(0.02)
        if conn:
            conn.close()

    def sampler(self, stop):
        while time.time() < stop:
            try:
                m = daemon.metrics(self.d)
                self.max_waiting = max(self.max_waiting, m["adapterd_waiting_sequences"])
                self.max_running = max(self.max_running, m["adapterd_running_sequences"])
                self.samples += 1
            except (OSError, http.client.HTTPException, AssertionError):
                pass
            self.rss_max = max(self.rss_max, daemon.rss_kib(self.d.proc.pid))
            time.sleep(0.05)

    def run(self):
        stop = time.time() + self.seconds
        ts = [threading.Thread(target=self.worker, args=(i, stop), daemon=True)
              for i in range(self.clients)]
        ts.append(threading.Thread(target=self.sampler, args=(stop,), daemon=True))
        for t in ts:
            t.start()
        for t in ts:
            t.join(self.seconds + 60)
        return self

    def n(self, pred):
        return sum(v for k, v in self.status.items() if pred(k))


# ---- daemon 1 ------------------------------------------------------------------------------

class S:
    d = None
    ref = {}          # adapter (None, demo-a, demo-b) -> pre-load greedy text
    warm = None       # (rss KiB, fds) after O1


def t_o1(d):
    pid = d.proc.pid
    for ad in (None, "demo-a", "demo-b"):
        S.ref[ad] = complete(d, ref_body(ad))[0]
    ld = Load(d, 2 * MAX_SEQS, 4.0).run()
    S.warm = (daemon.rss_kib(pid), daemon.n_fds(pid))
    total = sum(ld.status.values())
    print("# O1 clients %d for 4 s: requests %d (%.0f/s), status %s, socket errors %d, "
          "p50 %.0f ms, p99 %.0f ms" % (ld.clients, total, total / 4.0, ld.status,
                                       len(ld.conn_errors), 1000 * pct(ld.lat_ok, 50),
                                       1000 * pct(ld.lat_ok, 99)))
    assert total > 0, "no request answered"
    assert ld.status.get(200, 0) == total, "non-200 within capacity: %r" % ld.status
    assert not ld.conn_errors, "socket errors: %r" % ld.conn_errors[:3]


def t_o2(d):
    ld = Load(d, 64, 10.0).run()
    total = sum(ld.status.values())
    n5 = ld.n(lambda s: s >= 500)
    other = ld.n(lambda s: s not in (200, 429))
    print("# O2 clients 64 for 10 s (max-seqs %d, max-queue %d): answers %d, 200 %d, 429 %d "
          "(%.0f%%), other %d, 5xx %d, 429 without Retry-After %d, socket errors %d"
          % (MAX_SEQS, MAX_QUEUE, total, ld.status.get(200, 0), ld.status.get(429, 0),
             100.0 * ld.status.get(429, 0) / max(total, 1), other, n5, ld.no_retry_after,
             len(ld.conn_errors)))
    print("# O2 max waiting %d (cap %d), max running %d, /metrics samples %d, accepted p50 "
          "%.0f ms p99 %.0f ms, RSS max %.1f MiB"
          % (ld.max_waiting, MAX_QUEUE, ld.max_running, ld.samples, 1000 * pct(ld.lat_ok, 50),
             1000 * pct(ld.lat_ok, 99), ld.rss_max / 1024.0))
    assert n5 == 0 and other == 0, "statuses other than 200/429: %r" % ld.status
    assert ld.status.get(429, 0) > 0, "no 429: the load did not overload (%r)" % ld.status
    assert ld.status.get(200, 0) > 0, "nothing accepted under overload"
    assert ld.no_retry_after == 0, "%d 429s without Retry-After" % ld.no_retry_after
    assert not ld.conn_errors, "socket errors: %d, first %r" % (len(ld.conn_errors),
                                                               ld.conn_errors[:3])
    assert ld.samples >= 20, "too few /metrics samples (%d)" % ld.samples
    assert ld.max_waiting <= MAX_QUEUE, "waiting %d > cap %d" % (ld.max_waiting, MAX_QUEUE)
    assert ld.max_running <= MAX_SEQS, "running %d > max-seqs %d" % (ld.max_running, MAX_SEQS)
    # a bounded queue bounds the wait: 4 running + 8 queued, each a short completion (a
    # sanitizer build computes several times slower, so the bound is scaled there)
    bound = 5.0 * daemon.slowdown()
    assert pct(ld.lat_ok, 99) < bound, "accepted p99 %.1f s" % pct(ld.lat_ok, 99)


def t_o3(d):
    pid = d.proc.pid
    took = wait_idle(d)
    for ad in (None, "demo-a", "demo-b"):
        got = complete(d, ref_body(ad))[0]
        assert got == S.ref[ad], "after load, %s: %r != pre-load %r" % (ad, got, S.ref[ad])
    wait_idle(d)
    rss, fds = daemon.rss_kib(pid), daemon.n_fds(pid)
    growth = 100.0 * (rss - S.warm[0]) / S.warm[0]
    print("# O3 idle %.2f s after the load; RSS after O1 %.1f MiB, after O2 %.1f MiB "
          "(%+.1f%%); fds %d -> %d" % (took, S.warm[0] / 1024.0, rss / 1024.0, growth,
                                       S.warm[1], fds))
    assert abs(fds - S.warm[1]) <= 5, "fd count %d -> %d" % (S.warm[1], fds)
    # ASan's allocator keeps freed memory in quarantine: RSS says nothing there
    assert daemon.sanitized() or growth < 10.0, "RSS grew %.1f%% over the overload" % growth


def post_head(body):
    data = json.dumps(body).encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data)) + data


def t_o5(d):
    pid = d.proc.pid
    wait_idle(d)
    rss0 = daemon.rss_kib(pid)
    s = daemon.RawSocket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: fixes the window
    s.settimeout(10)
    s.connect((d.host, d.port))
    try:
        # ~2 KB per event (20 logprobs alternatives) x 2000 tokens: far over any buffer
        s.sendall(post_head({"model": MODEL, "prompt": PROMPT, "max_tokens": 2000,
                             "ignore_eos": True, "stream": True, "logprobs": 20,
                             "temperature": 0}))
        t0 = time.time()
        seen_running, rss_max = False, rss0
        limit = 15 * daemon.slowdown()  # a sanitizer build computes several times slower
        while time.time() - t0 < limit:
            m = daemon.metrics(d)
            rss_max = max(rss_max, daemon.rss_kib(pid))
            if m["adapterd_running_sequences"] > 0:
                seen_running = True
            elif seen_running and idle_state(m) == (0, 0, 0):
                break
            time.sleep(0.01)
        dropped = time.time() - t0
        assert seen_running, "the stream never ran"
        assert idle_state(daemon.metrics(d)) == (0, 0, 0), \
            "the stalled stream still runs after %d s" % limit
        got, closed = daemon.recv_all(s, timeout=5)
    finally:
        s.close()
    logged = "does not read its response" in d.log()
    print("# O5 write buffer cap %d B; stalled reader dropped %.2f s after its request "
          "(2000 tokens would take longer); bytes that reached the client's socket %d; "
          "RSS %.1f -> max %.1f MiB (%+.1f MiB); drop logged %s"
          % (WBUF, dropped, len(got), rss0 / 1024.0, rss_max / 1024.0,
             (rss_max - rss0) / 1024.0, logged))
    assert closed, "connection still open after the drop"
    assert b"[DONE]" not in got, "the stream finished: the reader was never dropped"
    assert got.startswith(b"HTTP/1.1 200"), got[:100]
    assert logged, "no 'does not read its response' log line"
    assert dropped < 8.0 * daemon.slowdown(), "drop took %.1f s" % dropped
    assert rss_max - rss0 < 32 * 1024, "RSS grew %.1f MiB" % ((rss_max - rss0) / 1024.0)


def first_token_then_close(d, adapter):
    """Start a stream with the adapter, read to the first token event, close.
    -> 'ok' or 'busy' (429, not started)."""
    s = d.connect(timeout=20)
    try:
        s.sendall(post_head({"model": MODEL, "prompt": PROMPT, "max_tokens": 1000,
                             "ignore_eos": True, "stream": True, "temperature": 0,
                             "adapter": adapter}))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            assert chunk, "closed before a response head"
            buf += chunk
        status = int(buf.split(b" ", 2)[1])
        if status == 429:
            return "busy"
        assert status == 200, "status %d: %r" % (status, buf[:300])
        while b"data: {" not in buf:
            chunk = s.recv(4096)
            assert chunk, "closed before the first token"
            buf += chunk
        assert b'"error"' not in buf, buf[:500]
        return "ok"
    finally:
        s.close()


def t_o4(d):
    pid = d.proc.pid
    wait_idle(d)
    fds0, rss0 = daemon.n_fds(pid), daemon.rss_kib(pid)
    # cancel latency: single streams, closed after the first token, until running is 0
    lat = []
    for i in range(20):
        assert first_token_then_close(d, "demo-a" if i % 2 else "demo-b") == "ok"
        lat.append(wait_idle(d, timeout=5))
    # 1000 clients, 16 at a time; a new request right after each close; every 25th a full
    # greedy completion that must equal the pre-load reference
    lock = threading.Lock()
    todo = list(range(1000))
    stats = {"ok": 0, "busy": 0, "checked": 0}
    errors = []

    def worker():
        while True:
            with lock:
                if not todo or len(errors) > 5:
                    return
                i = todo.pop()
            ad = ("demo-a", "demo-b")[i % 2]
            try:
                while first_token_then_close(d, ad) == "busy":
                    with lock:
                        stats["busy"] += 1
                    time.sleep(0.01)
                with lock:
                    stats["ok"] += 1
                if i % 25 == 0:
                    while True:
                        st, _, data = d.request("POST", "/v1/completions", ref_body(ad),
                                                timeout=30)
                        if st != 429:
                            break
                        with lock:
                            stats["busy"] += 1
                        time.sleep(0.01)
                    assert st == 200, "reference after cancel: %d %r" % (st, data[:200])
                    got = json.loads(data)["choices"][0]["text"]
                    assert got == S.ref[ad], "%s after cancels: %r != %r" % (ad, got, S.ref[ad])
                    with lock:
                        stats["checked"] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append("client %d: %s: %s" % (i, type(e).__name__, e))

    t0 = time.time()
    ts = [threading.Thread(target=worker, daemon=True) for _ in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    took = time.time() - t0
    assert not errors, "; ".join(errors[:3])
    settle = wait_idle(d)
    time.sleep(0.2)  # closing connections are freed on the loop's next turns
    m = daemon.metrics(d)
    pins = {ad: in_use(d, ad) for ad in ("demo-a", "demo-b")}
    fds, rss = daemon.n_fds(pid), daemon.rss_kib(pid)
    print("# O4 cancel latency (first token read -> running 0, 20 single streams incl. "
          "/metrics polling): p50 %.0f ms, p99 %.0f ms, max %.0f ms"
          % (1000 * pct(lat, 50), 1000 * pct(lat, 99), 1000 * max(lat)))
    print("# O4 1000 streams closed after the first token in %.1f s (16 at a time): ok %d, "
          "429 retried %d, references after cancels %d equal; idle %.2f s later"
          % (took, stats["ok"], stats["busy"], stats["checked"], settle))
    print("# O4 leaks: running %d waiting %d kv_blocks_used %d, in_use %s, fds %d -> %d, "
          "RSS %.1f -> %.1f MiB (%+.1f MiB)"
          % (m["adapterd_running_sequences"], m["adapterd_waiting_sequences"],
             m["adapterd_kv_blocks_used"], pins, fds0, fds, rss0 / 1024.0, rss / 1024.0,
             (rss - rss0) / 1024.0))
    assert stats["ok"] == 1000, stats
    assert stats["checked"] == 40, stats
    assert idle_state(m) == (0, 0, 0), idle_state(m)
    assert pins == {"demo-a": 0, "demo-b": 0}, "adapter pins leaked: %r" % pins
    assert abs(fds - fds0) <= 5, "fds %d -> %d" % (fds0, fds)
    assert pct(lat, 99) < 0.5, "cancel p99 %.0f ms" % (1000 * pct(lat, 99))
    assert rss - rss0 < 32 * 1024, "RSS grew %.1f MiB" % ((rss - rss0) / 1024.0)


# ---- daemon 2: O11 -------------------------------------------------------------------------

O11_SETS = [None, "demo-a", "demo-b",
            [{"name": "demo-a", "weight": 0.7}, {"name": "demo-b", "weight": -0.3}]]


def o11_body(i):
    tale = "abcdefgh"[i % 8] * (1 + i % 5)
    b = {"model": MODEL, "prompt": "Request %d: a tale of %s" % (i, tale),
         "max_tokens": 24, "ignore_eos": True, "return_token_ids": True}
    if i % 2:  # half sampled with a seed, half greedy
        b.update(temperature=0.9, seed=1000 + 7 * i, top_p=0.95)
    else:
        b["temperature"] = 0
    s = O11_SETS[i % 4]
    if isinstance(s, list):
        b["adapters"] = s
    elif s:
        b["adapter"] = s
    return b


def t_o11(d):
    refs = [complete(d, o11_body(i)) for i in range(32)]
    assert len(set(r[0] for r in refs)) > 16, "references barely differ: fixture too weak"
    got = [None] * 32
    errs = []
    gate = threading.Barrier(32)

    def one(i):
        try:
            gate.wait(10)
            got[i] = complete(d, o11_body(i))
        except Exception as e:  # noqa: BLE001
            errs.append("%d: %s" % (i, e))

    m_max = [0]
    stop = [False]

    def sampler():
        while not stop[0]:
            try:
                m_max[0] = max(m_max[0], daemon.metrics(d)["adapterd_running_sequences"])
            except (OSError, http.client.HTTPException, AssertionError):
                pass
            time.sleep(0.01)

    smp = threading.Thread(target=sampler, daemon=True)
    smp.start()
    ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(32)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    stop[0] = True
    smp.join(5)
    assert not errs, "; ".join(errs[:3])
    assert m_max[0] >= 8, "the 32 requests never ran together (max running %d)" % m_max[0]
    S.o11 = (refs, got, m_max[0])


def o11_check(kind):
    """Mismatches among the greedy (even) or seeded (odd) requests of t_o11."""
    refs, got, m_max = S.o11
    idx = [i for i in range(32) if i % 2 == (kind == "seeded")]
    bad = [i for i in idx if got[i] != refs[i]]
    print("# O11 %s: 16 concurrent (none/demo-a/demo-b/composition), mismatches %d; max "
          "running seen %d" % (kind, len(bad), m_max))
    for i in bad[:3]:
        n = next(k for k, (a, b) in enumerate(zip(refs[i][1], got[i][1])) if a != b)
        print("#   request %d (%s): first different token at %d: alone %r, batched %r"
              % (i, o11_body(i).get("adapter", o11_body(i).get("adapters", "base")), n,
                 refs[i][0], got[i][0]))
    if kind == "greedy":
        assert not bad, "mismatching requests %r" % bad
        return
    # Seeded nucleus sampling is not batch-invariant: batched logits differ from a lone
    # request's by ~3e-6, enough to swap two near-equal tokens in the top_p sort late in a
    # sequence. A wrong-slot bug (llama.cpp #10072) diverges at once; so the first
    # SEEDED_PREFIX tokens must match, and later divergences are reported, not failed.
    early = []
    for i in bad:
        n = next((k for k, (a, b) in enumerate(zip(refs[i][1], got[i][1])) if a != b),
                 min(len(refs[i][1]), len(got[i][1])))
        if n < SEEDED_PREFIX:
            early.append((i, n))
    print("# O11 seeded: %d of 16 diverge after token %d (batch-variant sampling), %d earlier"
          % (len(bad) - len(early), SEEDED_PREFIX, len(early)))
    assert not early, "requests diverging within the first %d tokens %r" % (SEEDED_PREFIX, early)


SEEDED_PREFIX = 8


def main():
    tap = daemon.Tap()
    t_start = time.time()
    with daemon.Daemon(["--model-name", MODEL, "--adapters-dir", ADAPTERS_DIR,
                        "--max-seqs", str(MAX_SEQS), "--max-queue", str(MAX_QUEUE),
                        "--max-write-buffer-bytes", str(WBUF), "--log-level", "warn"],
                       model=MODEL_DIR) as d:
        ok1 = tap.run("O1: within capacity every request is 200", t_o1, d)
        ok2 = tap.run("O2: overload answers only 200 or 429 + Retry-After, queue bounded, "
                      "no 5xx", t_o2, d)
        del ok2  # O3 still says whether the daemon recovered
        if ok1:
            tap.run("O3: after the load idle again, same outputs, fds flat, RSS bounded",
                    t_o3, d)
        else:
            tap.check(False, "O3: after the load idle again", "O1 failed")
        tap.run("O5: a stalled SSE reader is dropped at the write-buffer cap and its "
                "sequence cancelled", t_o5, d)
        if ok1:
            tap.run("O4: 1000 streams closed after the first token leak no KV blocks, "
                    "adapter pins or fds", t_o4, d)
        else:
            tap.check(False, "O4: 1000 streams closed after the first token", "O1 failed")
        tap.check(d.alive(), "daemon 1 alive at the end")
    if daemon.sanitized():  # ~15x slower compute: the 32-request batch outlives its timeouts
        tap.skip("O11: 32 concurrent requests equal their single-request references",
                 "sanitizer build (run it on the normal build)")
        print("# total %.1f s" % (time.time() - t_start))
        return tap.done()
    with daemon.Daemon(["--model-name", MODEL, "--adapters-dir", ADAPTERS_DIR,
                        "--log-level", "warn"], model=MODEL_DIR) as d2:
        S.o11 = None
        if tap.run("O11: 32 concurrent requests ran together", t_o11, d2):
            tap.run("O11: greedy requests equal their single-request references",
                    o11_check, "greedy")
            tap.run("O11: seeded (top_p) requests equal their single-request references "
                    "for their first %d tokens" % SEEDED_PREFIX,
                    o11_check, "seeded")
    print("# total %.1f s" % (time.time() - t_start))
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
