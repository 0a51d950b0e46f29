"""test_ops.py - operations: GET /readyz through a drain, --log-format json, and the text
access log line kept as it was.

Drain: /readyz answers 200; SIGTERM arrives while a stream is in flight; new connections
are refused (the listener is closed), a request whose head was already arriving is
answered 503 {"status": "draining"}; the stream completes and the daemon exits 0. With
--log-format json every stderr line is a JSON object and request lines carry the fields
docs/OPERATIONS.md lists. Run with /usr/bin/python3.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402
from daemon import read_response  # noqa: E402

REQUEST_FIELDS = ("ts", "level", "msg", "request_id", "method", "path", "route", "status",
                  "bytes", "duration_ms")


def stream_request(max_tokens):
    body = json.dumps({"model": "tiny-llama-2k", "prompt": "Once upon a time",
                       "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
                       "temperature": 0}).encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def recv_until(s, marker, timeout=10):
    s.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def recv_all(s, timeout=15):
    """Everything until the peer closes. Returns (data, closed)."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False


def wait_log(d, needle, timeout=5):
    deadline = time.time() + timeout
    while needle not in d.log() and time.time() < deadline:
        time.sleep(0.02)
    return needle in d.log()


def stderr_lines(d):
    with open(d.stderr_path, "rb") as f:
        return [ln for ln in f.read().decode("utf-8").splitlines() if ln.strip()]


def test_drain(tap, d):
    st, _, body = d.request("GET", "/readyz")
    tap.check(st == 200 and json.loads(body) == {"status": "ready"}, "readyz 200 ready",
              (st, body))
    st, _, _ = d.request("GET", "/healthz")
    tap.check(st == 200, "healthz 200", st)

    stream = d.connect()
    stream.sendall(stream_request(1500))  # well over a second on the tiny model
    first = recv_until(stream, b"data: ")
    tap.check(first.startswith(b"HTTP/1.1 200 "), "stream started", first[:200])
    # a second client's head is on its way when the signal arrives
    late = d.connect()
    late.sendall(b"GET /readyz HTTP/1.1\r\nHost: t\r\n")
    time.sleep(0.1)

    d.proc.send_signal(signal.SIGTERM)
    tap.check(wait_log(d, "draining"), "drain started (logged)", d.log()[-1000:])
    refused = False
    try:
        c = socket.create_connection((d.host, d.port), timeout=2)
        c.sendall(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response(c, timeout=5)
        c.close()
        refused = r is None or r[0] == 503  # closed unanswered, or told it is draining
    except OSError:
        refused = True  # the listener is closed: connection refused
    tap.check(refused, "new connections are refused while draining")

    late.sendall(b"\r\n")
    r = read_response(late, timeout=5)
    late.close()
    ok = r is not None and r[0] == 503
    doc = json.loads(r[2]) if ok else {}
    tap.check(ok and doc.get("status") == "draining" and
              doc.get("error", {}).get("code") == "draining" and
              r[1].get("connection") == "close" and r[1].get("retry-after") == "1",
              "readyz 503 draining for a request already arriving", r)

    rest, closed = recv_all(stream, timeout=60)
    stream.close()
    data = first + rest
    tap.check(closed and b"data: [DONE]" in data and data.endswith(b"0\r\n\r\n") and
              b'"finish_reason":"length"' in data, "in-flight stream completes (max_tokens)",
              data[-300:])
    try:
        d.proc.wait(15)
    except subprocess.TimeoutExpired:
        pass
    rc = d.proc.poll()
    tap.check(rc == 0, "exit status 0 after the drain", "%r\n%s" % (rc, d.log()[-2000:]))


def test_json_log(tap, d):
    lines = stderr_lines(d)
    parsed, bad = [], []
    for ln in lines:
        try:
            parsed.append(json.loads(ln))
        except ValueError:
            bad.append(ln)
    tap.check(lines and not bad and all(isinstance(p, dict) for p in parsed),
              "every stderr line is a JSON object", "\n".join(bad[:5]))
    tap.check(all({"ts", "level", "msg"} <= set(p) for p in parsed), "every line has ts, level, msg",
              [p for p in parsed if not {"ts", "level", "msg"} <= set(p)][:3])
    tap.check(all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", p.get("ts", ""))
                  for p in parsed), "ts is RFC 3339 UTC with milliseconds")
    reqs = [p for p in parsed if p.get("msg") == "request"]
    tap.check(reqs and all(set(REQUEST_FIELDS) <= set(p) and p["level"] == "info" for p in reqs),
              "request lines carry every field",
              [p for p in reqs if not set(REQUEST_FIELDS) <= set(p)][:3])
    types_ok = all(isinstance(p["status"], int) and isinstance(p["bytes"], int) and
                   isinstance(p["duration_ms"], (int, float)) and p["duration_ms"] >= 0
                   for p in reqs)
    tap.check(types_ok, "status and bytes are integers, duration_ms a number")
    stream = [p for p in reqs if p["route"] == "/v1/completions" and p["method"] == "POST"]
    tap.check(len(stream) == 1 and stream[0]["status"] == 200 and stream[0]["bytes"] > 1000,
              "the stream's line", stream)
    ready = [p for p in reqs if p["route"] == "/readyz"]
    tap.check(sorted(p["status"] for p in ready) == [200, 503], "readyz lines: 200 then 503",
              ready)
    info = [p for p in parsed if p.get("msg", "").startswith("SIGTERM: draining")]
    tap.check(len(info) == 1 and info[0]["level"] == "info", "other lines keep their message",
              info)


def test_adapter_field(tap):
    with daemon.Daemon(["--log-format", "json"]) as d:  # logs go with its folder at stop
        d.request("GET", "/v1/adapters/no-such-adapter")
        d.request("GET", "/no/such/path")
        wait_log(d, '"path":"/no/such/path"')
        lines = [json.loads(ln) for ln in stderr_lines(d)]
    reqs = {p["path"]: p for p in lines if p.get("msg") == "request"}
    a = reqs.get("/v1/adapters/no-such-adapter", {})
    tap.check(a.get("adapter") == "no-such-adapter" and a.get("route") == "/v1/adapters/{spec}" and
              a.get("status") == 404, "adapter field from the path", a)
    o = reqs.get("/no/such/path", {})
    tap.check(o.get("route") == "other" and "adapter" not in o, "unknown path: route other", o)


def test_text_log_unchanged(tap):
    with daemon.Daemon() as d:
        d.request("GET", "/healthz")
        d.request("GET", "/v1/models")
        wait_log(d, " GET /v1/models ")
        lines = stderr_lines(d)
    line = [ln for ln in lines if " GET /healthz " in ln]  # the start-up probes and ours
    pat = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info  GET /healthz 200 \d+B \d+\.\dms id=\S+$"
    tap.check(line and all(re.match(pat, ln) for ln in line), "text access line as before",
              "\n".join(lines[-5:]))
    tap.check(not any(ln.startswith("{") for ln in lines), "text mode writes no JSON")


def test_bad_format(tap):
    exe = daemon.binary()
    r = subprocess.run([exe, "--log-format", "xml"], capture_output=True, text=True, timeout=10)
    tap.check(r.returncode == 2 and "--log-format" in r.stderr and "text, json" in r.stderr,
              "--log-format xml: exit 2 naming the flag", (r.returncode, r.stderr))


def main():
    tap = daemon.Tap()
    # a longer context than the default tiny model, so the drained stream lasts long enough
    model = daemon.tiny_model("tiny-llama-2k", {"max_position_embeddings": 2048})
    d = daemon.Daemon(["--log-format", "json", "--model-name", "tiny-llama-2k",
                       "--drain-timeout-ms", "60000"], model=model)
    try:
        test_drain(tap, d)
    except Exception as e:  # noqa: BLE001
        tap.check(False, "drain sequence", "%s: %s\n%s" % (type(e).__name__, e, d.log()[-2000:]))
    finally:
        d.kill()
    test_json_log(tap, d)
    d.stop()  # removes its folder when it exited 0
    for fn in (test_adapter_field, test_text_log_unchanged, test_bad_format):
        try:
            fn(tap)
        except Exception as e:  # noqa: BLE001
            tap.check(False, fn.__name__, "%s: %s" % (type(e).__name__, e))
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
