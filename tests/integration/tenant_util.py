"""tenant_util.py - shared fixtures of test_tenants.py and test_fairshare.py.

HTTP with an API key (Client), tenant/key bootstrapping through the admin API of a daemon
in open mode (bootstrap), PEFT LoRA fixtures for the tiny test model (lora), multipart
uploads (upload, upload_partial), and a flooder process (`python3 tenant_util.py flood
PORT KEY MODEL SECONDS THREADS MAX_TOKENS`, prints the number of completed requests) so the
load of the fair-share test does not share a GIL with the thread that measures latency.
Run with /usr/bin/python3 (numpy writes the fixtures).
"""

import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import daemon  # noqa: E402

MODEL = "tiny"   # the --model-name the tests serve the tiny model as
PROMPT = "Once upon a time"


# ---- HTTP --------------------------------------------------------------------------------

def parse(data):
    try:
        return json.loads(data)
    except ValueError:
        return data


def err_code(body):
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("code")
    return None


class Client:
    """Requests to one daemon as one caller: key (None: no Authorization) and an optional
    X-Adapterd-Tenant. Every call opens a fresh connection."""

    def __init__(self, d, key=None, tenant=None, auth=None):
        self.host, self.port = d.host, d.port
        self.key, self.tenant, self.auth = key, tenant, auth

    def headers(self, extra=None):
        h = {}
        if self.auth is not None:
            h["Authorization"] = self.auth
        elif self.key is not None:
            h["Authorization"] = "Bearer " + self.key
        if self.tenant is not None:
            h["X-Adapterd-Tenant"] = self.tenant
        h.update(extra or {})
        return h

    def raw(self, method, path, body=None, headers=None, timeout=20.0):
        """-> (status, headers dict lower-case, body bytes). The body is sent after the head;
        a server that answers early and closes (401 before the body) is fine."""
        h = self.headers(headers)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            if body is not None or method in ("POST", "PUT", "PATCH"):
                h["Content-Length"] = str(len(body or b""))
            for k, v in h.items():
                conn.putheader(k, v)
            conn.endheaders()
            if body:
                try:
                    conn.send(body)
                except OSError:
                    pass
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def call(self, method, path, body=None, headers=None, timeout=20.0):
        """-> (status, headers, parsed JSON (or bytes))."""
        st, h, data = self.raw(method, path, body, headers, timeout)
        return st, h, parse(data)

    def complete(self, model=MODEL, prompt=PROMPT, max_tokens=8, **kw):
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        body.update(kw)
        return self.call("POST", "/v1/completions", body)

    def text(self, model=MODEL, **kw):
        st, _, body = self.complete(model, **kw)
        assert st == 200, "completion %s: %d %r" % (model, st, body)
        return body["choices"][0]["text"]

    def upload(self, name, ad, timeout=30.0):
        body, ctype = multipart(ad)
        return post_body(self, "/v1/adapters?name=" + urllib.parse.quote(name, safe=""),
                         body, ctype, timeout=timeout)


def expect(r, status, code=None, what=""):
    st, _, body = r[0], r[1], r[2]
    assert st == status, "%s: status %d, want %d: %r" % (what, st, status, body)
    if code is not None:
        assert err_code(body) == code, "%s: code %r, want %r: %r" % (what, err_code(body), code,
                                                                     body)
    return body


# ---- adapters ----------------------------------------------------------------------------

class Adapter:
    def __init__(self, path):
        with open(os.path.join(path, "adapter_config.json"), "rb") as f:
            self.config = f.read()
        with open(os.path.join(path, "adapter_model.safetensors"), "rb") as f:
            self.weights = f.read()


def base_config():
    with open(os.path.join(daemon.tiny_model(), "config.json")) as f:
        return json.load(f)


def lora(work, seed, r=2, targets=("q_proj", "v_proj"), strength=2.0):
    """A PEFT LoRA folder for the tiny model under work/fx/, from seed."""
    sys.path.insert(0, os.path.join(daemon.ROOT, "tools"))
    import hf_fixtures  # noqa: E402 (numpy)
    path = os.path.join(work, "fx", "lora-%d-r%d-%s" % (seed, r, "-".join(targets)))
    if not os.path.exists(os.path.join(path, "adapter_model.safetensors")):
        hf_fixtures.make_lora(path, base_config(), seed=seed, r=r, alpha=2.0 * r,
                              targets=list(targets), strength=strength)
    return Adapter(path)


def multipart(ad, boundary="----adapterd-tenant-5e2b1"):
    out = []
    for name, data, fn in (("config", ad.config, "adapter_config.json"),
                           ("weights", ad.weights, "adapter_model.safetensors")):
        out.append(b"--" + boundary.encode() + b"\r\n")
        out.append(('Content-Disposition: form-data; name="%s"; filename="%s"\r\n' %
                    (name, fn)).encode())
        out.append(b"Content-Type: application/octet-stream\r\n\r\n")
        out.append(data + b"\r\n")
    out.append(b"--" + boundary.encode() + b"--\r\n")
    return b"".join(out), "multipart/form-data; boundary=" + boundary


def post_body(c, path, body, ctype, chunk=16384, timeout=30.0):
    """POST body in chunks (the server may answer early and close: the rest is dropped)."""
    conn = http.client.HTTPConnection(c.host, c.port, timeout=timeout)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for k, v in c.headers({"Content-Type": ctype,
                               "Content-Length": str(len(body))}).items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            for i in range(0, len(body), chunk):
                conn.send(body[i:i + chunk])
        except OSError:
            pass
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, parse(data)
    finally:
        conn.close()


def head_only(c, method, path, content_length, headers=None, send=b"", timeout=5.0):
    """Send a request head announcing content_length body bytes, then only `send` of the
    body, and read the answer. -> (status, headers, body, seconds to the answer, closed)
    where closed says the server closed the connection after its answer (within 2 s);
    (None, ...) when it closed without an answer or did not answer within timeout."""
    s = daemon.RawSocket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((c.host, c.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    h = {"Host": "t", "Content-Length": str(content_length)}
    h.update(c.headers(headers))
    head = "%s %s HTTP/1.1\r\n" % (method, path)
    head += "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
    t0 = time.time()
    try:
        s.sendall(head.encode() + send)
        try:
            r = daemon.read_response(s, timeout=timeout)
        except (socket.timeout, ConnectionResetError) as e:
            return None, {}, repr(e), time.time() - t0, False
        took = time.time() - t0
        if r is None:
            return None, {}, b"", took, True
        _, closed = daemon.recv_all(s, timeout=2.0)
        return r[0], r[1], parse(r[2]), took, closed
    finally:
        s.close()


# ---- tenants and keys --------------------------------------------------------------------

def bootstrap(d, tenants, keys):
    """In open mode: create tenants ({name: {quota fields}}), then keys [(label, tenant,
    role)], the first of which must be an admin key (after it the daemon wants keys).
    -> {label: key object (with "key")}."""
    open_ = Client(d)
    for name, fields in tenants.items():
        body = {"name": name}
        body.update(fields)
        expect(open_.call("POST", "/v1/admin/tenants", body), 201, what="create tenant " + name)
    out = {}
    c = open_
    for label, tenant, role in keys:
        k = expect(c.call("POST", "/v1/admin/keys",
                          {"tenant": tenant, "role": role, "label": label}), 201,
                   what="create key " + label)
        out[label] = k
        if c is open_:
            assert role == "admin", "the first key must be an admin key"
            c = Client(d, k["key"])
    return out


def cli(*args):
    """adapterd ARGS (tenant/key commands) with a clean environment -> CompletedProcess."""
    import subprocess
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERD_")}
    return subprocess.run([daemon.binary()] + list(args), capture_output=True, text=True,
                          timeout=60, env=env)


def p50(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


# ---- the flooder process -----------------------------------------------------------------

def flood(port, key, model, seconds, threads, max_tokens):
    """Back-to-back completions from `threads` threads for `seconds` (or until SIGTERM); prints
    "done N errors E statuses {...}" on stdout."""
    import signal
    stop = [time.time() + seconds]
    lock = threading.Lock()

    def on_term(_sig, _frame):  # the test is done measuring: finish the requests in flight
        stop[0] = 0
    signal.signal(signal.SIGTERM, on_term)
    counts = {"done": 0, "errors": 0, "statuses": {}}

    def worker():
        while time.time() < stop[0]:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("POST", "/v1/completions", body=json.dumps(
                    {"model": model, "prompt": "Hello there", "max_tokens": max_tokens,
                     "temperature": 0, "ignore_eos": True}),
                    headers={"Authorization": "Bearer " + key,
                             "Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                conn.close()
                with lock:
                    counts["statuses"][r.status] = counts["statuses"].get(r.status, 0) + 1
                    if r.status == 200:
                        counts["done"] += 1
                    else:
                        counts["errors"] += 1
                if r.status != 200:
                    time.sleep(0.01)
            except (OSError, http.client.HTTPException):
                with lock:
                    counts["errors"] += 1
                time.sleep(0.01)

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 70)
    print("done %d errors %d statuses %s" % (counts["done"], counts["errors"],
                                              json.dumps(counts["statuses"])), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "flood":
        flood(int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), int(sys.argv[6]),
              int(sys.argv[7]))
    else:
        sys.exit("usage: tenant_util.py flood PORT KEY MODEL SECONDS THREADS MAX_TOKENS")
