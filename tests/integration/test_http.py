"""test_http.py - the HTTP layer of adapterd against a live daemon on 127.0.0.1.

Framing, limits, keep-alive, pipelining, timeouts and the request-smuggling payloads of
shared/RELIABILITY.md section 1 (a first slice of H1-H8), plus the command line. Every refused
request must get exactly one JSON error response and then a closed connection, and the daemon
must still answer /healthz afterwards. Raw sockets for malformed input, http.client for the
well-formed paths. Prints TAP; exits non-zero if anything failed.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402
from daemon import read_response, recv_all  # noqa: E402

GET_HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def expect_error(d, payload, status, code=None, send_parts=None):
    """Send payload on a fresh connection; require one JSON error response with status
    (and error code), then the connection closed with no second response."""
    s = d.connect()
    try:
        for part in send_parts or [payload]:
            s.sendall(part)
        r = read_response(s)
        assert r is not None, "connection closed without a response"
        st, headers, body = r
        assert st == status, "status %d, want %d; body %r" % (st, status, body[:200])
        assert headers.get("connection", "").lower() == "close", "no Connection: close"
        assert headers.get("content-type", "").startswith("application/json"), headers
        err = json.loads(body)["error"]
        assert err["type"] == "invalid_request_error", err
        assert isinstance(err["message"], str) and err["message"], err
        if code:
            assert err["code"] == code, "code %r, want %r" % (err["code"], code)
        assert headers.get("x-request-id"), "no X-Request-Id"
        rest, closed = recv_all(s, timeout=5)
        assert closed, "connection still open after the error"
        assert rest == b"", "bytes after the error response: %r" % rest[:200]
        return headers
    finally:
        s.close()


def test_healthz(d):
    st, headers, body = d.request("GET", "/healthz")
    assert st == 200, st
    assert headers["content-type"].startswith("application/json"), headers
    json.loads(body)
    assert int(headers["content-length"]) == len(body)
    assert headers["x-request-id"], headers


def test_request_id(d):
    st, headers, _ = d.request("GET", "/healthz", headers={"X-Request-Id": "abc-123.x:y"})
    assert headers["x-request-id"] == "abc-123.x:y", headers["x-request-id"]
    st, headers, _ = d.request("GET", "/healthz", headers={"X-Request-Id": "a<b>\"c d" + "e" * 300})
    rid = headers["x-request-id"]
    assert rid.startswith("abcde") and len(rid) == 128 and set(rid) <= set("abcde"), rid
    _, h1, _ = d.request("GET", "/healthz")
    _, h2, _ = d.request("GET", "/healthz")
    assert h1["x-request-id"] != h2["x-request-id"], "generated ids repeat"


def test_keep_alive(d):
    conn = http.client.HTTPConnection(d.host, d.port, timeout=5)
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    r.read()
    sock = conn.sock
    assert r.status == 200 and sock is not None
    conn.request("GET", "/healthz")
    r2 = conn.getresponse()
    r2.read()
    assert r2.status == 200
    assert conn.sock is sock, "second request did not reuse the connection"
    conn.close()


def test_http10_keep_alive(d):
    s = d.connect()
    s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    st, h, _ = read_response(s)
    assert st == 200 and h.get("connection", "").lower() == "keep-alive", h
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    st, h, _ = read_response(s)
    assert st == 200 and h.get("connection", "").lower() == "close", h
    assert recv_all(s)[1], "HTTP/1.0 without keep-alive must close"
    s.close()


def test_pipelined(d):
    s = d.connect()
    reqs = b"".join(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: pipe-%d\r\n\r\n" % i
                    for i in range(3))
    s.sendall(reqs)
    ids = []
    for _ in range(3):
        r = read_response(s)
        assert r is not None, "connection closed after %d responses" % len(ids)
        assert r[0] == 200, r[0]
        ids.append(r[1]["x-request-id"])
    assert ids == ["pipe-0", "pipe-1", "pipe-2"], ids
    s.close()


def test_pipelined_100(d):
    s = d.connect()
    s.sendall(b"".join(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: p%d\r\n\r\n" % i
                       for i in range(100)))
    for i in range(100):
        r = read_response(s)
        assert r is not None and r[1]["x-request-id"] == "p%d" % i, (i, r and r[1])
    s.close()


def test_body_too_large(d):
    # Only the head is sent: the 413 must come from Content-Length alone.
    expect_error(d, b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                    b"\r\nContent-Length: 2000001\r\n\r\n", 413, "body_too_large")


def test_too_many_headers(d):
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-H%d: v\r\n" % i
                                                              for i in range(100))
    expect_error(d, head + b"\r\n", 431, "too_many_headers")  # 101 fields with Host
    ok = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-H%d: v\r\n" % i
                                                           for i in range(99))
    st, _, _ = d.request("GET", "/healthz")
    s = d.connect()
    s.sendall(ok + b"\r\n")
    st = read_response(s)[0]
    s.close()
    assert st == 200, "100 header fields must be accepted, got %d" % st


def test_headers_too_large(d):
    big = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (17 * 1024) + b"\r\n\r\n"
    expect_error(d, big, 431, "headers_too_large")
    many = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(
        b"X-F%02d: %s\r\n" % (i, b"b" * 190) for i in range(90)) + b"\r\n"
    assert len(many) > 16384
    expect_error(d, many, 431, "headers_too_large")


def test_header_stream(d):
    """An endless header (Redis desync style) is cut at the limit, not buffered."""
    s = d.connect()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: ")
    sent, t0 = 0, time.time()
    try:
        while sent < 1 << 20:
            s.sendall(b"a" * 1024)
            sent += 1024
    except (BrokenPipeError, ConnectionResetError):
        pass
    data, closed = recv_all(s, timeout=5)
    s.close()
    assert data.startswith(b"HTTP/1.1 431 "), data[:100]
    assert closed and time.time() - t0 < 5


def test_uri_too_long(d):
    expect_error(d, b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "uri_too_long")
    s = d.connect()
    s.sendall(b"GET /" + b"a" * 7990 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    st = read_response(s)[0]
    s.close()
    assert st not in (400, 414, 431), "an 8000-byte request line is allowed, got %d" % st


def test_framing_errors(d):
    cases = [
        ("obs-fold Content-Length (CVE-2024-27982)",
         b"POST /healthz HTTP/1.1\r\nHost: t\r\nX: y\r\n Content-Length: 30\r\n\r\n"
         b"GET /evil HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("bare CR before Transfer-Encoding (CVE-2023-30589)",
         b"POST /healthz HTTP/1.1\r\nHost: t\r\nx:\rTransfer-Encoding: chunked\r\n\r\n"
         b"1\r\nA\r\n0\r\n\r\n", 400),
        ("bare CR in a value", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n", 400),
        ("bare LF line end", b"GET /healthz HTTP/1.1\r\nHost: t\nX: a\r\n\r\n", 400),
        ("NUL in a value", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
        ("Content-Length with Transfer-Encoding",
         b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("Transfer-Encoding with Content-Length",
         b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
         b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
        ("duplicate Content-Length",
         b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
         400),
        ("Content-Length +5", b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\n",
         400),
        ("space before colon", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A : b\r\n\r\n", 400),
        ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        ("HTTP/0.9 request line", b"GET /healthz\r\n\r\n", 400),
        ("HTTP/0.9 with bare LF", b"GET /healthz\nHost: t\r\n\r\n", 400),
        ("HTTP/2.0 request line", b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        ("HTTP/1.2 request line", b"GET /healthz HTTP/1.2\r\nHost: t\r\n\r\n", 400),
        ("HTTP/1.1 without Host", b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        ("two Host headers", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("dot segment in the path", b"GET /v1/../healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ]
    failures = []
    for name, payload, status in cases:
        try:
            expect_error(d, payload, status)
        except Exception as e:  # noqa: BLE001
            failures.append("%s: %s" % (name, e))
    assert not failures, "\n".join(failures)


def test_transfer_encoding_refused(d):
    expect_error(d, b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                    b"\r\n5\r\nhello\r\n0\r\n\r\n", 411, "length_required")
    expect_error(d, b"POST /v1/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400)


def test_no_parse_after_error(d):
    """A smuggled second request after a framing error is never answered."""
    s = d.connect()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n" + GET_HEALTH)
    data, closed = recv_all(s)
    s.close()
    assert closed, "connection not closed"
    assert data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 400 "), data[:300]


def test_connection_close(d):
    s = d.connect()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + GET_HEALTH)
    r = read_response(s)
    assert r[0] == 200 and r[1]["connection"].lower() == "close", r[1]
    rest, closed = recv_all(s)
    s.close()
    assert closed and rest == b"", "data after Connection: close was answered: %r" % rest[:100]


def test_leading_crlf(d):
    s = d.connect()
    s.sendall(b"\r\n" + GET_HEALTH)
    st = read_response(s)[0]
    s.close()
    assert st == 200, st


def test_body_split(d):
    """A body within the limit, sent in pieces, reaches the handler (404 or 4xx from the api
    for this route is fine, 400/413/408 from framing is not)."""
    body = json.dumps({"prompt": "x" * 1000}).encode()
    s = d.connect()
    s.sendall(b"POST /no-such-route HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 300):
        s.sendall(body[i:i + 300])
        time.sleep(0.01)
    r = read_response(s)
    s.close()
    assert r is not None and r[0] == 404, r and r[:2]


def test_expect_continue(d):
    s = d.connect()
    s.sendall(b"POST /no-such-route HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
              b"Expect: 100-continue\r\n\r\n")
    s.settimeout(5)
    first = s.recv(4096)
    assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), first[:100]
    s._rest = first[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
    s.sendall(b"{}")
    r = read_response(s)
    s.close()
    assert r[0] == 404, r[0]
    # Too large: 413 at once, no 100 Continue.
    hdr = expect_error(d, b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 9999999\r\n"
                          b"Expect: 100-continue\r\n\r\n", 413)
    assert hdr


def test_client_gone_midrequest(d):
    for payload in (b"GET /healthz HTTP/1.1\r\nHo",
                    b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\""):
        s = d.connect()
        s.sendall(payload)
        s.close()
    s = d.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(GET_HEALTH * 50)
    s.close()  # RST while responses are being written
    assert d.alive()


def stream_request(max_tokens, model="tiny-llama"):
    body = json.dumps({"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True,
                       "ignore_eos": True, "temperature": 0}).encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def read_until(s, marker, timeout=10):
    s.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_stream_client_gone(d):
    """Clients that leave mid-stream cancel their jobs (the engine thread keeps calling the
    sink until end(); the connection is freed only after it)."""
    for _ in range(5):
        s = d.connect()
        s.sendall(stream_request(400))
        head = read_until(s, b"data: ")
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]
        assert b"Transfer-Encoding: chunked" in head and b"text/event-stream" in head, head[:400]
        s.close()
    deadline = time.time() + 5
    while d.log().count("(client gone)") < 5 and time.time() < deadline:
        time.sleep(0.05)
    assert d.log().count("(client gone)") >= 5, "cancelled streams not logged:\n" + d.log()[-1500:]
    st, _, body = d.request("POST", "/v1/completions", {"model": "tiny-llama", "prompt": "hi",
                                                       "max_tokens": 3})
    assert st == 200, (st, body[:300])


def test_sigterm_drains_stream(tap):
    """SIGTERM while a stream is running: the stream completes, then exit 0."""
    d = daemon.Daemon()
    # a sanitizer build computes several times slower: a shorter stream stays inside the
    # default drain window (10 s) there too
    n_tokens, wait = (300, 15) if not daemon.sanitized() else (60, 15 * daemon.slowdown())
    try:
        s = d.connect()
        s.sendall(stream_request(n_tokens))
        first = read_until(s, b"data: ")
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        d.proc.send_signal(signal.SIGTERM)
        rest, closed = recv_all(s, timeout=wait)
        s.close()
        data = first + rest
        assert closed, "connection not closed after the drained stream"
        assert b"data: [DONE]" in data and data.endswith(b"0\r\n\r\n"), data[-200:]
        try:
            d.proc.wait(wait)  # the first SIGTERM alone must end it (a second one forces exit 1)
        except subprocess.TimeoutExpired:
            pass
        rc = d.stop(timeout=5)
        assert rc == 0, "exit status %r\n%s" % (rc, d.log()[-2000:])
    finally:
        d.kill()


def test_header_timeout(d):
    """--header-timeout-ms 500: a head that never completes gets 408 and a close."""
    s = d.connect()
    t0 = time.time()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
    r = read_response(s, timeout=5)
    took = time.time() - t0
    assert r is not None and r[0] == 408, r
    assert json.loads(r[2])["error"]["code"] == "request_timeout"
    assert 0.4 <= took < 2.5, "408 after %.2f s" % took
    assert recv_all(s)[1]
    s.close()


def test_slow_head_is_not_extended(d):
    """Bytes trickling in do not push the head deadline (slowloris)."""
    s = d.connect()
    t0 = time.time()
    s.sendall(b"GET /healthz HTTP/1.1\r\n")
    got = b""
    s.settimeout(0.1)
    try:
        for _ in range(30):
            s.sendall(b"X: y\r\n")
            try:
                got += s.recv(4096)
            except socket.timeout:
                pass
            if got:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    assert got.startswith(b"HTTP/1.1 408 "), got[:80]
    assert time.time() - t0 < 2.5


def test_body_timeout(d):
    s = d.connect()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{")
    r = read_response(s, timeout=5)
    s.close()
    assert r is not None and r[0] == 408, r


def test_idle_timeout(d):
    """--idle-timeout-ms 500: a kept-alive idle connection is closed without a response."""
    s = d.connect()
    s.sendall(GET_HEALTH)
    assert read_response(s)[0] == 200
    t0 = time.time()
    data, closed = recv_all(s, timeout=5)
    s.close()
    assert closed and data == b"", data[:100]
    assert 0.3 <= time.time() - t0 < 3


def test_fresh_connection_timeout(d):
    """A connection that never sends a byte is closed after the head deadline."""
    s = d.connect()
    t0 = time.time()
    data, closed = recv_all(s, timeout=5)
    s.close()
    assert closed and data == b"" and time.time() - t0 < 3


def test_cli():
    exe = daemon.binary()
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.returncode
    for flag in ("--host", "--port", "--model", "--model-name", "--adapters-dir", "--data-dir",
                 "--threads", "--max-body-bytes", "--max-header-bytes", "--max-headers",
                 "--header-timeout-ms", "--idle-timeout-ms", "--max-connections",
                 "--max-batch-tokens", "--max-seqs", "--log-level"):
        env = "ADAPTERD_" + flag[2:].upper().replace("-", "_")
        assert flag in out.stdout and env in out.stdout, "%s / %s missing from --help" % (flag, env)
    assert "default: 2000000" in out.stdout
    v = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    assert v.returncode == 0 and v.stdout.startswith("adapterd "), v.stdout
    bad = subprocess.run([exe, "--port", "70000"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "--port" in bad.stderr, (bad.returncode, bad.stderr)
    env = dict(os.environ, ADAPTERD_MAX_HEADERS="lots")
    bad = subprocess.run([exe], capture_output=True, text=True, timeout=10, env=env)
    assert bad.returncode == 2 and "ADAPTERD_MAX_HEADERS" in bad.stderr, bad.stderr
    bad = subprocess.run([exe, "--no-such-flag"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "--no-such-flag" in bad.stderr, bad.stderr
    bad = subprocess.run([exe, "import", "/nonexistent"], capture_output=True, text=True,
                         timeout=10)
    assert bad.returncode == 2 and "--name" in bad.stderr, bad.stderr
    md = subprocess.run([exe, "--help-markdown"], capture_output=True, text=True, timeout=10)
    with open(os.path.join(daemon.ROOT, "docs", "OPERATIONS.md")) as f:
        doc = f.read()
    stale = [line for line in md.stdout.splitlines() if line not in doc]
    assert md.returncode == 0 and not stale, \
        "docs/OPERATIONS.md flag table is stale (regenerate with --help-markdown):\n" + \
        "\n".join(stale)


def test_env_and_precedence(tap):
    """ADAPTERD_* sets a value, a flag beats it: max-headers 5 from the environment."""
    env = {"ADAPTERD_MAX_HEADERS": "5"}
    with daemon.Daemon(env=env) as d:
        expect_error(d, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-A: 1\r\n" * 5 + b"\r\n",
                     431)
    with daemon.Daemon(["--max-headers", "50"], env=env) as d:
        s = d.connect()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-A: 1\r\n" * 5 + b"\r\n")
        st = read_response(s)[0]
        s.close()
        assert st == 200, st
    # A --config file ranks under the environment and the flags.
    conf = os.path.join(daemon.TMP, "precedence-%d.conf" % os.getpid())
    with open(conf, "w") as f:
        f.write("# limits\nmax-headers = 3\nmodel-name = \"from config\"\n")
    hdrs4 = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-A: 1\r\n" * 4 + b"\r\n"
    with daemon.Daemon(["--config", conf]) as d:
        expect_error(d, hdrs4, 431)  # 5 fields > 3 from the file
        st, _, body = d.request("GET", "/v1/models")
        assert st == 200 and b"from config" in body, body
    with daemon.Daemon(["--config", conf], env=env) as d:  # environment 5 beats the file's 3
        s = d.connect()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-A: 1\r\n" * 3 + b"\r\n")
        st = read_response(s)[0]
        s.close()
        assert st == 200, st
    with open(conf, "a") as f:
        f.write("no-such-option = 1\n")
    bad = subprocess.run([daemon.binary(), "--config", conf], capture_output=True, text=True,
                         timeout=10)
    assert bad.returncode == 2 and ":4: unknown option 'no-such-option'" in bad.stderr, bad.stderr
    os.remove(conf)


def test_import_and_adapters_dir(tap):
    """`adapterd import` prints the stored row as JSON; --adapters-dir imports sub-folders at
    start-up and the listening line counts them."""
    sys.path.insert(0, os.path.join(daemon.ROOT, "tools"))
    import hf_fixtures
    import shutil
    model = daemon.tiny_model()
    with open(os.path.join(model, "config.json")) as f:
        cfg = json.load(f)
    work = os.path.join(daemon.TMP, "http-import-%d" % os.getpid())
    shutil.rmtree(work, ignore_errors=True)
    hf_fixtures.make_lora(os.path.join(work, "single"), cfg, seed=1, r=2, alpha=4,
                          targets=["q_proj"])
    for i, name in enumerate(("alpha", "beta")):
        hf_fixtures.make_lora(os.path.join(work, "dir", name), cfg, seed=2 + i, r=2, alpha=4,
                              targets=["v_proj"])
    data = os.path.join(work, "data")
    cmd = [daemon.binary(), "import", os.path.join(work, "single"), "--name", "solo",
           "--data-dir", data, "--model", model]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["name"] == "solo" and row["version"] == 1 and len(row["sha256"]) == 64, row
    bad = subprocess.run(cmd[:2] + [os.path.join(work, "missing")] + cmd[3:],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "missing" in bad.stderr, bad.stderr
    with daemon.Daemon(["--adapters-dir", os.path.join(work, "dir"), "--model-name", "base"],
                       data_dir=data) as d:
        assert "(model base, 3 adapters)" in d.log(), d.log()[:500]
    shutil.rmtree(work, ignore_errors=True)


def test_sigterm(tap):
    d = daemon.Daemon()
    try:
        assert "listening on http://127.0.0.1:%d" % d.port in d.log(), d.log()
        s = d.connect()  # an idle keep-alive connection must not hold the shutdown up
        s.sendall(GET_HEALTH)
        read_response(s)
        t0 = time.time()
        rc = d.stop(signal.SIGTERM, timeout=15)
        s.close()
        assert rc == 0, "exit status %r\n%s" % (rc, d.log()[-2000:])
        assert time.time() - t0 < 5, "shutdown took %.1f s" % (time.time() - t0)
    finally:
        d.kill()


def main():
    tap = daemon.Tap()
    tap.run("command line: --help, --version, bad values exit 2", test_cli)
    try:
        d = daemon.Daemon()
    except Exception as e:  # noqa: BLE001
        tap.check(False, "daemon starts", e)
        return tap.done()
    try:
        for name, fn in [
            ("GET /healthz: 200 JSON with Content-Length and X-Request-Id", test_healthz),
            ("X-Request-Id echoed, sanitised, generated ids unique", test_request_id),
            ("keep-alive: two requests on one connection", test_keep_alive),
            ("HTTP/1.0 keep-alive and close", test_http10_keep_alive),
            ("3 pipelined GETs in one send answered in order", test_pipelined),
            ("100 pipelined GETs answered in order", test_pipelined_100),
            ("413 from Content-Length alone, then close", test_body_too_large),
            ("431 for 101 header fields; 100 accepted", test_too_many_headers),
            ("431 for 17 KiB of headers (one field, many fields)", test_headers_too_large),
            ("431 for an endless header, closed quickly", test_header_stream),
            ("414 for an 8 KiB+ request line; 8000 B accepted", test_uri_too_long),
            ("400/505 + close for smuggling and framing payloads", test_framing_errors),
            ("411 for Transfer-Encoding on requests", test_transfer_encoding_refused),
            ("nothing parsed after a framing error", test_no_parse_after_error),
            ("Connection: close honoured, following bytes ignored", test_connection_close),
            ("a leading empty line is tolerated", test_leading_crlf),
            ("a body sent in pieces reaches the handler", test_body_split),
            ("Expect: 100-continue; 413 without 100", test_expect_continue),
            ("clients vanishing mid-request and mid-response", test_client_gone_midrequest),
            ("streaming: chunked SSE; clients leaving mid-stream cancel", test_stream_client_gone),
        ]:
            tap.run(name, fn, d)
        tap.check(d.alive(), "daemon still alive and healthy after all of the above",
                  d.log()[-2000:])
    finally:
        rc = d.stop()
        tap.check(rc == 0, "SIGTERM: exit status 0", "exit status %r\n%s" % (rc, d.log()[-2000:]))

    try:
        fast = daemon.Daemon(["--header-timeout-ms", "500", "--idle-timeout-ms", "500",
                              "--body-timeout-ms", "500"])
    except Exception as e:  # noqa: BLE001
        tap.check(False, "daemon with short timeouts starts", e)
        return tap.done()
    try:
        tap.run("408 + close after --header-timeout-ms", test_header_timeout, fast)
        tap.run("trickled header bytes do not extend the deadline", test_slow_head_is_not_extended,
                fast)
        tap.run("408 after --body-timeout-ms without body bytes", test_body_timeout, fast)
        tap.run("idle keep-alive connection closed silently", test_idle_timeout, fast)
        tap.run("silent fresh connection closed", test_fresh_connection_timeout, fast)
        tap.check(fast.alive(), "short-timeout daemon still alive", fast.log()[-2000:])
    finally:
        rc = fast.stop()
        tap.check(rc == 0, "short-timeout daemon: exit status 0", "%r\n%s" % (rc, fast.log()[-2000:]))
    tap.run("flag beats ADAPTERD_* environment beats default", test_env_and_precedence, tap)
    tap.run("import prints the row; --adapters-dir imports at start-up",
            test_import_and_adapters_dir, tap)
    tap.run("SIGTERM with an idle keep-alive connection: exit 0 quickly", test_sigterm, tap)
    tap.run("SIGTERM during a stream: the stream completes, exit 0", test_sigterm_drains_stream,
            tap)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
