"""test_http_hostile.py - RELIABILITY.md section 1.4, tests H1-H14, against live daemons.

Each test prints one TAP line and a "# H<n> ..." line with the figure the plan asks for.
test_http.py covers the well-formed paths and a first slice of the payloads; this file
measures: process RSS, descriptors and bytes read (/proc/PID/{status,fd,io}), seconds to
close, statuses per payload, and uses the JSON access log to prove that no refused or
smuggled request ever reached a handler (every response has exactly one access line, so a
handler that ran would add a line the refusals do not account for).

Daemons (default model data/model, fresh --data-dir under tests/tmp):
  main   an admin API key in the store (so auth is on), --log-format json,
         --header-timeout-ms 2000 (slowloris at 2 s, not 10 s), --max-upload-bytes 256 MiB;
  ka     --max-keepalive-requests 12 --idle-timeout-ms 1000 --max-connection-age-ms 2500;
  cap    RLIMIT_NOFILE 64 (ulimit -n in a wrapper) with --max-connections 1000: the daemon
         must lower the cap to 64 - 32 = 32 and say so.
H4 uses a Python slowloris (no slowhttptest needed). H15 (libFuzzer) lives in tests/fuzz.
Run with /usr/bin/python3; about 15 s (25 s with BUILD=build-asan).
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402
from daemon import read_response, recv_all  # noqa: E402

MODEL = os.path.join(daemon.ROOT, "data", "model")
GET_HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST


# ---- /proc figures --------------------------------------------------------------------------



def rchar(pid):
    """Bytes the process has read with read()/recv() so far (all threads)."""
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def access_lines(d, start=0):
    """JSON access-log lines ("msg": "request") from byte offset start of the log."""
    out = []
    for line in d.log()[start:].splitlines():
        if line.startswith("{") and '"msg":"request"' in line:
            out.append(json.loads(line))
    return out


def one_response(d, payload, timeout=5):
    """payload on a fresh connection -> (status, headers, body, extra bytes, closed)."""
    s = d.connect()
    try:
        s.sendall(payload)
        r = read_response(s, timeout=timeout)
        rest, closed = recv_all(s, timeout=3)
    except (BrokenPipeError, ConnectionResetError):
        r, rest, closed = None, b"", True
    finally:
        s.close()
    if r is None:
        return None, {}, b"", rest, closed
    return r[0], r[1], r[2], rest, closed


def rss_checked():
    """ASan keeps freed memory in quarantine (up to 256 MiB) and TSan maps shadow memory, so
    RSS bounds only hold for the plain build; under a sanitizer the figures are printed and
    LeakSanitizer checks at exit."""
    return not daemon.sanitized()


def reads_checked():
    """TSan's runtime reads /proc/self/maps and the like in the daemon's process, which /proc's
    rchar counts with the sockets: byte-count bounds hold for the plain and ASan builds."""
    return daemon.sanitizer() != "tsan"


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


# ---- H1-H3: sizes ---------------------------------------------------------------------------

def test_h1(d):
    pid = d.proc.pid
    long_uri = b"/" + b"a" * 8192  # 8,193 B
    ok_uri = b"/healthz?pad=" + b"a" * (8000 - 13)  # 8,000 B
    for _ in range(20):  # warm the allocator before the baseline
        one_response(d, b"GET " + ok_uri + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    base = daemon.rss_kib(pid)
    codes = set()
    for _ in range(100):
        st, h, _, rest, closed = one_response(d, b"GET " + long_uri + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert st == 414 and h.get("connection") == "close" and closed and rest == b"", (st, h)
        codes.add(st)
        st, h, body, _, _ = one_response(d, b"GET " + ok_uri + b" HTTP/1.1\r\nHost: t\r\n"
                                         b"Connection: close\r\n\r\n")
        assert st == 200, (st, body[:200])
        codes.add(st)
    # the exact edge: a request line of 8,192 B is served, 8,193 B is not
    line = lambda n: b"GET /healthz?p=" + b"a" * (n - 15 - 9) + b" HTTP/1.1"  # noqa: E731
    assert len(line(8192)) == 8192
    close = b"\r\nHost: t\r\nConnection: close\r\n\r\n"
    st_edge = one_response(d, line(8192) + close)[0]
    st_over = one_response(d, line(8193) + close)[0]
    assert (st_edge, st_over) == (200, 414), (st_edge, st_over)
    delta = daemon.rss_kib(pid) - base
    print("# H1 8,193 B URI -> 414 + close x100; 8,000 B URI -> 200 x100; request line "
          "8,192 B -> %d, 8,193 B -> %d; RSS delta %+d KiB (limit < 1024)"
          % (st_edge, st_over, delta))
    assert delta < 1024 or not rss_checked(), "RSS grew by %d KiB" % delta


def test_h2(d):
    pid = d.proc.pid
    start = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"

    def head_of(total):  # a head of exactly total bytes (one filler field)
        fill = total - len(start) - len(b"X-Fill: \r\n\r\n")
        return start + b"X-Fill: " + b"f" * fill + b"\r\n\r\n"
    assert len(head_of(16385)) == 16385
    cases = [("16,385 B head", head_of(16385), 431, "headers_too_large"),
             ("101 fields of 10 B", b"GET /healthz HTTP/1.1\r\nHost: tt\r\n" +
              b"".join(b"X-%03d: ab\r\n" % i for i in range(100)) + b"\r\n", 431,
              "too_many_headers"),
             ("one 17 KiB field", start + b"X-Big: " + b"b" * 17408 + b"\r\n\r\n", 431,
              "headers_too_large"),
             ("16,384 B head", head_of(16384), 200, None),
             ("100 fields", b"GET /healthz HTTP/1.1\r\nHost: tt\r\nConnection: close\r\n" +
              b"".join(b"X-%03d: ab\r\n" % i for i in range(98)) + b"\r\n", 200, None)]
    got = []
    for name, payload, want, code in cases:
        st, h, body, rest, closed = one_response(d, payload)
        got.append("%s -> %s" % (name, st))
        assert st == want, "%s: %s, want %d" % (name, st, want)
        if want == 431:
            assert json.loads(body)["error"]["code"] == code, body
            assert h.get("connection") == "close" and closed and rest == b"", (name, h, rest)
    # Peak memory per connection: the RSS growth per connection holding an unfinished
    # 16,000 B head, measured over the second 300 of 600 such connections (the first 300
    # soak up heap memory freed at start-up, which would hide the cost).
    socks = []

    def hold(k):
        for _ in range(k):
            s = d.connect()
            s.sendall(start + b"X-Hold: " + b"h" * (16000 - len(start) - 10) + b"\r\n")
            socks.append(s)
        time.sleep(0.4)
    hold(300)
    base = daemon.rss_kib(pid)
    hold(300)
    per_conn = (daemon.rss_kib(pid) - base) * 1024 / 300
    for s in socks:
        s.close()
    print("# H2 %s; peak RSS per connection holding a 16,000 B head: %.0f B "
          "(16 KiB input buffer + the copied field; limit < 64 KiB)" % ("; ".join(got), per_conn))
    assert 0 < per_conn < 64 * 1024 or not rss_checked(), per_conn


def test_h3(d):
    """Endless header stream (Redis desync style): 1 KiB lines, 50 per second."""
    pid = d.proc.pid
    r0 = rchar(pid)
    s = d.connect()
    first = b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
    s.sendall(first)
    stop = threading.Event()
    state = {"sent": len(first), "t_limit": None}

    def feeder():
        i = 0
        try:
            while not stop.is_set() and state["sent"] < 4 << 20:
                line = b"X-%d: " % i + b"a" * 1000 + b"\r\n"
                if state["t_limit"] is None and state["sent"] + len(line) > 16384:
                    state["t_limit"] = time.time()  # this line crosses the limit
                s.sendall(line)
                state["sent"] += len(line)
                i += 1
                time.sleep(0.02)
        except OSError:
            pass
    t = threading.Thread(target=feeder)
    t.start()
    data, closed = recv_all(s, timeout=10)
    t_close = time.time()
    stop.set()
    t.join()
    s.close()
    sent, t_limit = state["sent"], state["t_limit"]
    read = rchar(pid) - r0
    secs = t_close - t_limit if t_limit else -1
    print("# H3 %s; closed %.3f s after the 16 KiB limit was crossed; client sent %d B; daemon "
          "read %d B (all sockets)" % (data[:12].decode(errors="replace").strip(), secs, sent,
                                       read))
    assert data.startswith(b"HTTP/1.1 431 ") and closed, data[:100]
    assert data.count(b"HTTP/1.1") == 1
    assert 0 <= secs < 1.0 * daemon.slowdown(), secs
    assert read < 64 * 1024 or not reads_checked(), read


# ---- H4: slowloris ----------------------------------------------------------------------------

def test_h4(d):
    """20 connections trickling one byte every 0.4 s against --header-timeout-ms 2000, while a
    client measures /healthz latency (p99 before and during)."""
    def latencies(seconds):
        out, end = [], time.time() + seconds
        while time.time() < end:
            t0 = time.time()
            st = one_response(d, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0]
            assert st == 200, st
            out.append(time.time() - t0)
        return out
    latencies(0.2)  # warm-up
    before = latencies(1.0)
    payload = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"z" * 100
    results = []

    def slow(k):
        s = d.connect()
        t0 = time.time()
        got, status = b"", None
        try:
            s.settimeout(0.4)
            for b in payload:
                s.send(bytes([b]))
                try:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                    if b"\r\n\r\n" in got:
                        break
                except socket.timeout:
                    pass
            s.settimeout(3)
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        status = got[9:12].decode() if got.startswith(b"HTTP/1.1 ") else None
        results.append((time.time() - t0, status))
        s.close()
    threads = [threading.Thread(target=slow, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    during = latencies(2.5)
    for t in threads:
        t.join()
    in_window = sum(1 for secs, st in results if 1.0 <= secs <= 3.0 and st == "408")
    cut = sorted(secs for secs, _ in results)
    b99, d99 = p99(before) * 1e3, p99(during) * 1e3
    print("# H4 slow connections closed with 408 at the 2 s deadline (+-1 s): %d/20 (%.2f-%.2f s);"
          " normal /healthz p99 %.2f ms before, %.2f ms during (%d/%d requests, ratio %.2f)"
          % (in_window, cut[0], cut[-1], b99, d99, len(before), len(during), d99 / b99))
    assert in_window == 20, results
    # +-10% of a sub-millisecond loopback p99 is below Python's own jitter: require that the
    # slow connections cost normal traffic no more than 10 ms at p99.
    assert d99 < b99 + 10, (b99, d99)


# ---- H5-H7: smuggling and framing payloads ----------------------------------------------------

EVIL = b"GET /evil HTTP/1.1\r\nHost: t\r\n\r\n"
TE = b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
CL = b"POST /healthz HTTP/1.1\r\nHost: t\r\n"
PAYLOADS = [
    # H5: the "rejected" row of the 1.2 table, and the rows 8.1.0 accepts (never reach it here)
    ("H5", "TE chunked + CL", TE + b"Content-Length: 5\r\n\r\n0\r\n\r\n" + EVIL, 400),
    ("H5", "CL + TE chunked", CL + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n" + EVIL, 400),
    ("H5", "duplicate CL", CL + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + EVIL, 400),
    ("H5", "CL +5", CL + b"Content-Length: +5\r\n\r\nhello" + EVIL, 400),
    ("H5", "CL 0x5", CL + b"Content-Length: 0x5\r\n\r\nhello" + EVIL, 400),
    ("H5", "CL -1", CL + b"Content-Length: -1\r\n\r\n" + EVIL, 400),
    ("H5", "CL 5,5", CL + b"Content-Length: 5,5\r\n\r\nhello" + EVIL, 400),
    ("H5", "CL 2^70", CL + b"Content-Length: 1180591620717411303424\r\n\r\n" + EVIL, 400),
    ("H5", "CL with space before colon", CL + b"Content-Length : 5\r\n\r\nhello" + EVIL, 400),
    ("H5", "TE chunked, gzip", CL + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n" + EVIL,
     (400, 501)),
    ("H5", "two TE fields", TE + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + EVIL, (400, 501)),
    ("H5", "TE xchunked", CL + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + EVIL, (400, 501)),
    ("H5", "chunk size overflow", TE + b"\r\nFFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n" + EVIL, 411),
    ("H5", "chunk extension '5 x'", TE + b"\r\n5 x\r\nhello\r\n0\r\n\r\n" + EVIL, 411),
    ("H5", "HTTP/1.2", b"GET /healthz HTTP/1.2\r\nHost: t\r\n\r\n" + EVIL, (400, 505)),
    ("H5", "NUL in a value", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n" + EVIL, 400),
    ("H5", "chunk data without CRLF (8.1.0 accepts)", TE + b"\r\n5\r\nhelloXX0\r\n\r\n" + EVIL, 411),
    ("H5", "Content-Length in a trailer (8.1.0 accepts)",
     TE + b"\r\n0\r\nContent-Length: 33\r\n\r\n" + EVIL, 411),
    # H6
    ("H6", "x:\\rTransfer-Encoding (CVE-2023-30589)",
     CL + b"x:\rTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n0\r\n\r\n" + EVIL, 400),
    ("H6", "obs-fold Content-Length (CVE-2024-27982)",
     CL + b"X: y\r\n Content-Length: 30\r\n\r\n" + EVIL, 400),
    ("H6", "bare CR in a value", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n" + EVIL, 400),
    ("H6", "obs-fold line (tab)", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: a\r\n\tb\r\n\r\n" + EVIL,
     400),
    ("H6", "trailing HTAB after chunked", CL + b"Transfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n" +
     EVIL, (400, 501)),
    # H7
    ("H7", "HTTP/0.9 + body (GET /x\\n...)",
     b"GET /healthz\nHost: a\r\nContent-Length: 5\r\n\r\nhello" + EVIL, 400),
    ("H7", "HTTP/0.9 request line", b"GET /healthz\r\n\r\n" + EVIL, 400),
    ("H7", "HTTP/2.0 request line", b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n" + EVIL, 505),
    ("H7", "HTTP/1.0 + TE chunked",
     b"POST /healthz HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + EVIL, 400),
    ("H7", "HTTP/1.1 without Host", b"GET /healthz HTTP/1.1\r\n\r\n" + EVIL, 400),
    ("H7", "two Host fields", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + EVIL, 400),
    ("H7", "two Host fields on HTTP/1.0", b"GET /healthz HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
     400),
    # the other framing rules
    ("H7", "bare LF line end", b"GET /healthz HTTP/1.1\r\nHost: t\nX: a\r\n\r\n" + EVIL, 400),
    ("H7", "tab before colon", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX\t: a\r\n\r\n" + EVIL, 400),
    ("H7", "empty field name", b"GET /healthz HTTP/1.1\r\nHost: t\r\n: a\r\n\r\n" + EVIL, 400),
    ("H7", "TE gzip", CL + b"Transfer-Encoding: gzip\r\n\r\n" + EVIL, 501),
    ("H7", "TE chunked (a request body without Content-Length)", TE + b"\r\n0\r\n\r\n" + EVIL, 411),
]


def test_h5_h7(d, tap):
    start = len(d.log())
    refused = {}  # request id -> (status, code)
    figures = {"H5": [], "H6": [], "H7": []}
    failures = []
    for h, name, payload, want in PAYLOADS:
        want = want if isinstance(want, tuple) else (want,)
        st, hd, body, rest, closed = one_response(d, payload)
        n_resp = (1 if st else 0) + rest.count(b"HTTP/1.")
        figures[h].append("%s=%s" % (name, st))
        try:
            assert st in want, "status %s, want %s" % (st, want)
            assert hd.get("connection") == "close", "no Connection: close"
            assert closed and n_resp == 1, "responses %d, closed %s" % (n_resp, closed)
            err = json.loads(body)["error"]
            refused[hd["x-request-id"]] = (st, err["code"])
        except (AssertionError, ValueError, KeyError) as e:
            failures.append("%s %s: %s" % (h, name, e))
    # One connection/request/response more: Connection: close, then a second request (8.1.0
    # parses it); the second must never be answered.
    st, hd, _, rest, closed = one_response(
        d, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + EVIL)
    if not (st == 200 and closed and rest == b""):
        failures.append("H5 data after Connection: close: %s %r" % (st, rest[:80]))
    time.sleep(0.3)
    lines = access_lines(d, start)
    stray = [a for a in lines if a.get("request_id") not in refused and a.get("path") != "/healthz"]
    mismatched = [a for a in lines if a.get("request_id") in refused and
                  (a["status"], a.get("code")) != refused[a["request_id"]]]
    evil = [a for a in lines if "evil" in (a.get("path") or "")]
    handler = len(lines) - len(refused) - 1  # minus the one served GET /healthz above
    for h in ("H5", "H6", "H7"):
        print("# %s statuses: %s" % (h, "; ".join(figures[h])))
    print("# H5-H7 %d payloads: responses per connection = 1 for %d; access lines %d "
          "(refused %d + 1 served); handler invocations for refused payloads = %d; smuggled "
          "GET /evil served = %d" % (len(PAYLOADS), len(refused), len(lines), len(refused),
                                     handler, len(evil)))
    assert not failures, "\n".join(failures)
    assert not stray and not mismatched and not evil and handler == 0, (stray, mismatched, evil)


# ---- H8-H11: pipelining, chunked, early refusals ----------------------------------------------

def test_h8(d, key, model):
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n"
    s = d.connect()
    s.sendall(b"".join(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: h8-%d\r\n\r\n" % i
                       for i in range(3)))
    ids3 = [read_response(s)[1]["x-request-id"] for _ in range(3)]
    s.close()
    assert ids3 == ["h8-0", "h8-1", "h8-2"], ids3
    body = json.dumps({"model": model, "prompt": "Once upon a time", "max_tokens": 8,
                       "temperature": 0}).encode()
    reqs = []
    for i in range(100):
        if i % 10 == 0:  # a slow one every tenth: the fast ones behind it must wait
            reqs.append(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\n" + auth +
                        b"Content-Type: application/json\r\nX-Request-Id: p-%d\r\n"
                        b"Content-Length: %d\r\n\r\n" % (i, len(body)) + body)
        else:
            reqs.append(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: p-%d\r\n\r\n" % i)
    start = len(d.log())
    s = d.connect()
    s.sendall(b"".join(reqs))
    got = []
    for i in range(100):
        r = read_response(s, timeout=30)
        assert r is not None, "closed after %d responses" % i
        assert r[0] == 200, (i, r[0], r[2][:200])
        got.append(r[1]["x-request-id"])
    s.close()
    want = ["p-%d" % i for i in range(100)]
    violations = sum(1 for a, b in zip(got, want) if a != b)
    time.sleep(0.2)
    logged = [a["request_id"] for a in access_lines(d, start) if a["request_id"].startswith("p-")]
    # a request is logged when its response is complete: the log order is the finishing order
    overlap = sum(1 for a, b in zip(logged, want) if a != b)
    print("# H8 3 pipelined: ids %s; 100 pipelined (10 completions among them) in one write: "
          "order violations %d; finished out of order %d (max in flight per connection = 1)"
          % (",".join(ids3), violations, overlap))
    assert violations == 0 and overlap == 0 and len(logged) == 100, (got[:5], logged[:5])


def test_h9(d, key):
    """Chunked request bodies are refused with 411 (design choice, docs/OPERATIONS.md):
    nothing of a chunked body is ever parsed, so no upload is created."""
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n"
    head = (b"POST /v1/adapters/h9 HTTP/1.1\r\nHost: t\r\n" + auth +
            b"Content-Type: multipart/form-data; boundary=xx\r\nTransfer-Encoding: chunked\r\n\r\n")
    cases = [("1-byte chunks x10^5", b"1\r\na\r\n" * 100000 + b"0\r\n\r\n"),
             ("extension ;a=\"b\"", b"5;a=\"b\"\r\nhello\r\n0\r\n\r\n"),
             ("last chunk with trailers", b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"),
             ("size FFFFFFFFFFFFFFFFF1", b"FFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n")]
    out = []
    pid = d.proc.pid
    r0 = rchar(pid)
    for name, body in cases:
        s = d.connect()
        s.sendall(head)
        sender = threading.Thread(target=lambda: _send_quietly(s, body))
        sender.start()
        r = read_response(s)
        sender.join()
        s.close()
        out.append("%s -> %s" % (name, r and r[0]))
        assert r is not None and r[0] == 411 and r[1].get("connection") == "close", (name, r)
    st, _, body = d.request("GET", "/v1/adapters", headers={"Authorization": "Bearer " + key})
    assert st == 200 and b"h9" not in body, body[:300]
    print("# H9 %s; body bytes accepted = 0 (no upload created); daemon read %d B in all "
          "(lingering close discards at most 1 MiB per connection)" % ("; ".join(out),
                                                                        rchar(pid) - r0))


def _send_quietly(s, data):
    try:
        s.sendall(data)
    except OSError:
        pass


def test_h10(d, key):
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n"
    pid = d.proc.pid
    figures = []
    for expect in (b"", b"Expect: 100-continue\r\n"):
        head = (b"POST /v1/adapters/h10 HTTP/1.1\r\nHost: t\r\n" + auth + expect +
                b"Content-Type: multipart/form-data; boundary=xx\r\nContent-Length: 300000000\r\n\r\n")
        r0 = rchar(pid)
        s = d.connect()
        t0 = time.time()
        s.sendall(head)  # no body byte: the answer must come from the head alone
        data, closed = recv_all(s, timeout=5)
        took = time.time() - t0
        s.close()
        read = rchar(pid) - r0
        figures.append("%s: %s in %.3f s, 100 Continue %s, daemon read %d B"
                       % ("with Expect" if expect else "without Expect",
                          data[9:12].decode(errors="replace"), took,
                          "sent" if b" 100 " in data else "not sent", read))
        assert data.startswith(b"HTTP/1.1 413 ") and closed, data[:200]
        assert b"100 Continue" not in data and b'"too_large"' in data, data[:300]
        assert took < 1.0 * daemon.slowdown(), took
        assert read < 64 * 1024 or not reads_checked(), read
    print("# H10 Content-Length 300,000,000 to POST /v1/adapters (cap 256 MiB): " +
          "; ".join(figures))


def test_h11(d):
    pid = d.proc.pid
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n")
    r0 = rchar(pid)
    s = d.connect()
    s.sendall(head)
    r = read_response(s)
    read_head_only = rchar(pid) - r0
    closed = recv_all(s, timeout=3)[1]
    s.close()
    assert r is not None and r[0] == 401 and closed, r
    # The same while the client streams the 50 MB body as fast as it can.
    r0 = rchar(pid)
    s = d.connect()
    s.sendall(head)
    sender = threading.Thread(target=lambda: _send_quietly(s, b"x" * 50000000))
    sender.start()
    r2 = read_response(s)
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:  # the daemon may have reset it already (its lingering close gave up)
        pass
    sender.join()
    s.close()
    time.sleep(0.3)
    read_streaming = rchar(pid) - r0
    print("# H11 unauthenticated 50 MB POST: %s; daemon read %d B before the 401 (head only, "
          "limit <= 4096 + head); streaming client: %s, daemon read %d B in all (lingering close "
          "discards at most 1 MiB)" % (r[0], read_head_only, r2 and r2[0], read_streaming))
    assert read_head_only <= 4096 + len(head) or not reads_checked(), read_head_only
    assert r2 is not None and r2[0] == 401
    assert read_streaming <= (1 << 20) + 256 * 1024 or not reads_checked(), read_streaming


# ---- H12: clients leaving ---------------------------------------------------------------------

def test_h12(d, key, model):
    pid = d.proc.pid
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n"
    body_head = b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"
    stream = json.dumps({"model": model, "prompt": "Once upon a time", "max_tokens": 200,
                         "stream": True, "ignore_eos": True}).encode()
    stream_req = (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\n" + auth +
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(stream) +
                  stream)

    def once(kind):
        s = socket.socket()
        s.connect((d.host, d.port))
        if kind == 0:  # half-close mid-body
            s.sendall(body_head + b"x" * 500)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            try:
                s.recv(4096)
            except OSError:
                pass
        elif kind == 1:  # RST mid-body
            s.sendall(body_head + b"x" * 500)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        elif kind == 2:  # RST mid-response (20 pipelined)
            s.sendall(GET_HEALTH * 20)
            s.settimeout(5)
            s.recv(100)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        elif kind == 3:  # half-close right after a request: the pending response is dropped
            s.sendall(GET_HEALTH * 3)
            s.shutdown(socket.SHUT_WR)
        else:  # RST mid-stream of a generation
            s.sendall(stream_req)
            s.settimeout(10)
            s.recv(200)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        s.close()

    def settle(base_fds):
        end = time.time() + 5
        while time.time() < end and daemon.n_fds(pid) > base_fds + 5:
            time.sleep(0.05)
        time.sleep(0.3)
    for i in range(200):  # warm-up: allocator arenas, threads, caches
        once(i % 4)
    for _ in range(5):
        once(4)
    settle(daemon.n_fds(pid))
    base_fds, base_rss = daemon.n_fds(pid), daemon.rss_kib(pid)
    n = 0
    for i in range(4000):
        once(i % 4)
        n += 1
    for _ in range(50):
        once(4)
        n += 1
    settle(base_fds)
    fds, rss = daemon.n_fds(pid), daemon.rss_kib(pid)
    print("# H12 %d iterations (half-close / RST mid-body, RST mid-response x20 pipelined, "
          "half-close after the request, 50 RSTs mid-stream): fds %d -> %d, RSS %d -> %d KiB "
          "(%+d KiB); alive %s" % (n, base_fds, fds, base_rss, rss, rss - base_rss, d.alive()))
    assert abs(fds - base_fds) <= 5, (fds, base_fds)
    assert abs(rss - base_rss) <= 1024 or not rss_checked(), (rss, base_rss)
    assert d.alive()


# ---- H13: keep-alive limits (the "ka" daemon) -------------------------------------------------

def test_h13(ka):
    s = ka.connect()
    closes = []
    for i in range(12):
        s.sendall(GET_HEALTH)
        r = read_response(s)
        assert r is not None and r[0] == 200, (i, r)
        closes.append(r[1].get("connection") == "close")
    eof = recv_all(s, timeout=3)[1]
    s.close()
    first_close = closes.index(True) + 1 if True in closes else None
    assert first_close == 12 and eof, closes
    # idle: closed silently --idle-timeout-ms after the last response
    s = ka.connect()
    s.sendall(GET_HEALTH)
    read_response(s)
    t0 = time.time()
    data, closed = recv_all(s, timeout=5)
    idle = time.time() - t0
    s.close()
    assert closed and data == b"" and 0.8 <= idle <= 1.6, (closed, data, idle)
    # age: requests at 0, 0.8, 1.6 s keep it alive (idle 1 s); a head begun at 2.3 s and
    # finished at 2.7 s starts a request on a connection older than 2.5 s: Connection: close
    s = ka.connect()
    t0 = time.time()
    kept = []
    for i in range(3):
        s.sendall(GET_HEALTH)
        r = read_response(s)
        assert r is not None and r[0] == 200, (i, r)
        kept.append(r[1].get("connection") != "close")
        time.sleep(0.8 * (i + 1) - (time.time() - t0) if i < 2 else 2.3 - (time.time() - t0))
    s.sendall(b"GET /healthz HTTP/1.1\r\n")
    time.sleep(2.7 - (time.time() - t0))
    s.sendall(b"Host: t\r\n\r\n")
    r = read_response(s)
    age_cut = time.time() - t0
    eof_age = recv_all(s, timeout=3)[1]
    s.close()
    assert all(kept) and r is not None and r[0] == 200, (kept, r)
    assert r[1].get("connection") == "close" and eof_age and 2.5 <= age_cut <= 3.0, (r, age_cut)
    # age while idle: requests at 0, 0.9, 1.8 s, then nothing: closed at 2.5 s (age), not at
    # 2.8 s (idle)
    s = ka.connect()
    t0 = time.time()
    for i in range(3):
        s.sendall(GET_HEALTH)
        assert read_response(s)[0] == 200
        if i < 2:
            time.sleep(0.9)
    closed = recv_all(s, timeout=5)[1]
    idle_age = time.time() - t0
    s.close()
    print("# H13 --max-keepalive-requests 12: first Connection: close on response %s, then EOF %s;"
          " --idle-timeout-ms 1000: idle close after %.2f s; --max-connection-age-ms 2500: "
          "Connection: close on the request at %.2f s; idle connection closed at age %.2f s"
          % (first_close, eof, idle, age_cut, idle_age))
    assert closed and 2.4 <= idle_age <= 2.75, idle_age


# ---- H14: connection cap (the "cap" daemon) ---------------------------------------------------

def test_h14(cap):
    pid = cap.proc.pid
    log = cap.log()
    assert "serving at most 32 connections" in log, log[-1500:]
    served = []
    for _ in range(32):
        s = cap.connect()
        s.sendall(GET_HEALTH)
        r = read_response(s)
        assert r is not None and r[0] == 200, r
        served.append(s)
    # the storm: 300 connections over the cap, while measuring the daemon's CPU
    c0, t0 = cpu_ticks(pid), time.time()
    closed_fast, other, slowest = 0, 0, 0.0
    for _ in range(300):
        s = socket.socket()
        t1 = time.time()
        try:
            s.connect((cap.host, cap.port))
            s.settimeout(2)
            s.sendall(GET_HEALTH)
            data = s.recv(4096)
            if data == b"":
                closed_fast += 1
            else:
                other += 1
        except (ConnectionResetError, BrokenPipeError):
            closed_fast += 1
        except OSError:
            other += 1
        slowest = max(slowest, time.time() - t1)
        s.close()
    # hold at the cap (32 open and idle) for 1 s: the loop must sleep
    c1 = cpu_ticks(pid)
    time.sleep(1.0)
    idle_cpu = (cpu_ticks(pid) - c1) / os.sysconf("SC_CLK_TCK") * 100
    storm_cpu = (c1 - c0) / os.sysconf("SC_CLK_TCK") / max(time.time() - t0 - 1.0, 1e-3) * 100
    ok_after = 0
    for s in served:
        s.sendall(GET_HEALTH)
        r = read_response(s)
        ok_after += r is not None and r[0] == 200
        s.close()
    print("# H14 RLIMIT_NOFILE 64 + --max-connections 1000 -> cap 32 (warning logged); 300 "
          "connections over the cap: closed without a response %d, other outcomes %d, slowest "
          "%.3f s; daemon CPU %.1f%% during the storm, %.1f%% holding 32 idle connections; served "
          "connections answering afterwards %d/32" % (closed_fast, other, slowest, storm_cpu,
                                                     idle_cpu, ok_after))
    assert closed_fast == 300 and other == 0 and slowest < 1.0, (closed_fast, other, slowest)
    assert idle_cpu < 5 and ok_after == 32, (idle_cpu, ok_after)
    assert cap.alive()


# ---- main ---------------------------------------------------------------------------------------

def make_key(data_dir):
    out = subprocess.run([daemon.binary(), "key", "add", "--tenant", "default", "--role", "admin",
                          "--data-dir", data_dir], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split()[0]


def capped_binary(work):
    """A wrapper that lowers RLIMIT_NOFILE (soft and hard) to 64 before exec'ing adapterd."""
    path = os.path.join(work, "adapterd-nofile64")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nulimit -n 64 || exit 1\nexec %s \"$@\"\n" % daemon.binary())
    os.chmod(path, 0o755)
    return path


def timed(tap, name, fn, *args):
    t0 = time.time()
    ok = tap.run(name, fn, *args)
    print("# (%.1f s)" % (time.time() - t0), flush=True)
    return ok


def main():
    tap = daemon.Tap()
    if not rss_checked():
        print("# ASan build: RSS figures are reported, not checked (quarantine); fds still are")
    work = os.path.join(daemon.TMP, "http-hostile-%d" % os.getpid())
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    data = os.path.join(work, "data")
    os.makedirs(data)
    try:
        key = make_key(data)
        # --heap-trim-idle-ms 0: the RSS deltas of H1, H2 and H12 measure what connections
        # keep, not when the idle heap trim happens to run
        d = daemon.Daemon(["--log-format", "json", "--header-timeout-ms", "2000",
                           "--max-upload-bytes", "268435456", "--heap-trim-idle-ms", "0"],
                          model=MODEL, data_dir=data)
    except Exception as e:  # noqa: BLE001
        tap.check(False, "daemon with an API key starts", e)
        return tap.done()
    try:
        st, _, body = d.request("GET", "/v1/models", headers={"Authorization": "Bearer " + key})
        model = json.loads(body)["data"][0]["id"] if st == 200 else "model"
        timed(tap, "H1 414 + close for an 8,193 B URI, 8,000 B served, RSS flat", test_h1, d)
        timed(tap, "H2 431 + close for 16,385 B / 101 fields / one 17 KiB field", test_h2, d)
        timed(tap, "H3 endless header stream cut at 16 KiB within 1 s", test_h3, d)
        timed(tap, "H4 20 slowloris connections cut at the 2 s deadline; normal p99", test_h4, d)
        timed(tap, "H5-H7 smuggling payloads: one 400/411/501/505 each, close, no handler",
                test_h5_h7, d, tap)
        timed(tap, "H8 pipelining: 3 and 100 in one write, in order, one in flight", test_h8, d,
                key, model)
        timed(tap, "H9 chunked request bodies: 411 + close, nothing parsed", test_h9, d, key)
        timed(tap, "H10 Content-Length 300 MB upload: 413 from the head, no 100 Continue",
                test_h10, d, key)
        timed(tap, "H11 unauthenticated 50 MB POST: 401 before the body", test_h11, d)
        timed(tap, "H12 10^3+ half-closes and RSTs: fds and RSS back to baseline", test_h12, d,
                key, model)
        tap.check(d.alive(), "main daemon alive after H1-H12", d.log()[-2000:])
    finally:
        rc = d.stop()
        tap.check(rc == 0, "main daemon: SIGTERM exit 0", "%r\n%s" % (rc, d.log()[-2000:]))
    try:
        with daemon.Daemon(["--max-keepalive-requests", "12", "--idle-timeout-ms", "1000",
                            "--max-connection-age-ms", "2500"], model=MODEL) as ka:
            timed(tap, "H13 keep-alive: request cap, idle close, connection age", test_h13, ka)
    except daemon.DaemonError as e:
        tap.check(False, "H13 keep-alive daemon starts", e)
    old_bin = os.environ.get("ADAPTERD_BIN")
    os.environ["ADAPTERD_BIN"] = capped_binary(work)
    try:
        with daemon.Daemon(["--max-connections", "1000"], model=MODEL) as cap:
            timed(tap, "H14 connection cap below RLIMIT_NOFILE; excess closed, no spinning",
                    test_h14, cap)
    except daemon.DaemonError as e:
        tap.check(False, "H14 capped daemon starts", e)
    finally:
        if old_bin is None:
            del os.environ["ADAPTERD_BIN"]
        else:
            os.environ["ADAPTERD_BIN"] = old_bin
    if not tap.failed:
        shutil.rmtree(work, ignore_errors=True)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
