"""test_store_http.py - the adapter admin API (docs/API.md "Adapter admin") over real HTTP.

Uploads (multipart built here and streamed in chunks with http.client, plus one `curl -F`),
versions, listings, completions by NAME / NAME@V / alias, aliases (the hot swap), deletes,
the T5 hostile names, media type, size caps (413 before the body is read, checked with
Expect: 100-continue), validation errors (422), truncated multipart, pin/unpin, the vLLM
load/unload endpoints and their path confinement, a restart on the same data dir, a
bit-flipped blob (503 adapter_unavailable, state "broken"), the cache budget, and a cold
load next to base-model traffic. Prints TAP; exits non-zero if anything failed.
Run with /usr/bin/python3 (numpy writes the fixtures).
"""

import hashlib
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
from daemon import read_response, recv_all  # noqa: E402

sys.path.insert(0, os.path.join(daemon.ROOT, "tools"))
import hf_fixtures  # noqa: E402

MODEL = "tiny"
PROMPT = "Once upon a time"
MAX_UPLOAD = 100000
SLACK = 64 * 1024  # the config part's cap + framing, allowed on top of --max-upload-bytes
WORK = os.path.join(daemon.TMP, "store_http-%d" % os.getpid())
DATA = os.path.join(WORK, "data")
FX = os.path.join(WORK, "fx")
ROOTS = os.path.join(WORK, "roots")
VROOT = os.path.join(ROOTS, "root")
HEX = set("0123456789abcdef")

ADAPTER_FIELDS = {
    "object": str, "id": str, "name": str, "version": int, "kind": str, "rank": int,
    "alpha": float, "target_modules": list, "base_fingerprint": str, "sha256": str,
    "config_sha256": str, "size_bytes": int, "memory_bytes": int, "created": int,
    "requests": int, "pinned": bool, "state": str, "resident": bool, "loading": bool,
    "in_use": int,
}


# ---- fixtures ------------------------------------------------------------------------------

class Adapter:
    """One PEFT folder on disk and its two files' bytes."""

    def __init__(self, path, r, alpha, targets):
        self.path, self.r, self.alpha, self.targets = path, r, alpha, targets
        with open(os.path.join(path, "adapter_config.json"), "rb") as f:
            self.config = f.read()
        with open(os.path.join(path, "adapter_model.safetensors"), "rb") as f:
            self.weights = f.read()
        self.sha256 = hashlib.sha256(self.weights).hexdigest()
        self.config_sha256 = hashlib.sha256(self.config).hexdigest()


def make_adapter(path, cfg, seed, r=2, alpha=4.0, targets=("q_proj", "v_proj")):
    hf_fixtures.make_lora(path, cfg, seed=seed, r=r, alpha=alpha, targets=list(targets))
    return Adapter(path, r, alpha, list(targets))


def base_config():
    with open(os.path.join(daemon.tiny_model(), "config.json")) as f:
        return json.load(f)


# ---- HTTP helpers --------------------------------------------------------------------------

def multipart(parts, boundary="----adapterd-test-7d1f0c"):
    """parts: list of (name, bytes[, filename]) -> (body bytes, content type)."""
    out = []
    for p in parts:
        name, data = p[0], p[1]
        disp = 'form-data; name="%s"' % name
        if len(p) > 2:
            disp += '; filename="%s"' % p[2]
        out.append(b"--" + boundary.encode() + b"\r\n")
        out.append(("Content-Disposition: %s\r\n" % disp).encode())
        out.append(b"Content-Type: application/octet-stream\r\n\r\n")
        out.append(data + b"\r\n")
    out.append(b"--" + boundary.encode() + b"--\r\n")
    return b"".join(out), "multipart/form-data; boundary=" + boundary


def adapter_parts(ad):
    return [("config", ad.config, "adapter_config.json"),
            ("weights", ad.weights, "adapter_model.safetensors")]


def post_stream(d, path, body, content_type, chunk=1500, headers=None, timeout=20.0):
    """POST body in chunks on a fresh connection (the server may answer early and close:
    then the rest is not sent). -> (status, headers, parsed JSON or raw bytes)."""
    conn = http.client.HTTPConnection(d.host, d.port, timeout=timeout)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            for i in range(0, len(body), chunk):
                conn.send(body[i:i + chunk])
        except OSError:
            pass  # answered (and closed) before the whole body went out
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, parse(data)
    finally:
        conn.close()


def parse(data):
    try:
        return json.loads(data)
    except ValueError:  # text/plain (vLLM endpoints) stays bytes
        return data


def upload(d, name, ad, path=None, extra=()):
    """Upload adapter ad as name (query form unless path is given)."""
    body, ctype = multipart(adapter_parts(ad) + list(extra))
    path = path or "/v1/adapters?name=" + urllib.parse.quote(name, safe="")
    return post_stream(d, path, body, ctype)


def call(d, method, path, body=None):
    st, h, data = d.request(method, path, body)
    return st, h, parse(data)


def complete(d, model, stream=False, max_tokens=8):
    return call(d, "POST", "/v1/completions", {"model": model, "prompt": PROMPT, "temperature": 0,
                                               "max_tokens": max_tokens, "stream": stream})


def text_of(d, model):
    st, _, body = complete(d, model)
    assert st == 200, "completion on %s: %d %r" % (model, st, body)
    return body["choices"][0]["text"]


def err_code(body):
    return body["error"]["code"] if isinstance(body, dict) and "error" in body else body


def expect(st, body, want_status, want_code=None, what=""):
    assert st == want_status, "%s: status %d, want %d: %r" % (what, st, want_status, body)
    if want_code is not None:
        assert err_code(body) == want_code, "%s: code %r, want %r" % (what, err_code(body),
                                                                     want_code)


def check_adapter_object(obj, name, version, ad):
    for k, t in ADAPTER_FIELDS.items():
        assert k in obj, "field %s missing: %r" % (k, obj)
        assert isinstance(obj[k], t) and not (t is int and isinstance(obj[k], bool)), \
            "field %s: %r is not %s" % (k, obj[k], t.__name__)
    assert "last_used" in obj and (obj["last_used"] is None or isinstance(obj["last_used"], int))
    assert obj["object"] == "adapter" and obj["kind"] == "lora", obj
    assert obj["id"] == "%s@%d" % (name, version) and obj["name"] == name, obj
    assert obj["version"] == version and obj["target_modules"] == ad.targets, obj
    assert obj["rank"] == ad.r and obj["alpha"] == ad.alpha, obj
    assert obj["sha256"] == ad.sha256, (obj["sha256"], ad.sha256)
    assert obj["config_sha256"] == ad.config_sha256, (obj["config_sha256"], ad.config_sha256)
    assert obj["size_bytes"] == len(ad.weights) and obj["memory_bytes"] > 0, obj
    assert len(obj["base_fingerprint"]) == 64 and set(obj["base_fingerprint"]) <= HEX, obj
    assert obj["state"] == "ready" and "reason" not in obj, obj
    assert abs(obj["created"] - time.time()) < 120, obj


def snapshot(top, exclude):
    """Every path under top (relative), except the subtree exclude."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(top):
        if os.path.abspath(dirpath) == os.path.abspath(exclude):
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.abspath(p) != os.path.abspath(exclude):
                out.add(os.path.relpath(p, top))
    return out


# ---- daemon A: the admin API ---------------------------------------------------------------

class State:
    """What the tests learn and later tests (restart, bit flip) check again."""
    fx = {}
    texts = {}        # spec -> greedy text seen before the restart
    ids = []          # GET /v1/adapters ids before the restart
    fingerprint = None


def t_upload_stream(d, S):
    st, _, body = upload(d, "alpha", S.fx["a1"])
    expect(st, body, 201, what="upload alpha")
    check_adapter_object(body, "alpha", 1, S.fx["a1"])
    assert body["pinned"] is False and body["requests"] == 0, body
    S.fingerprint = body["base_fingerprint"]
    # The path form, and the optional base_fingerprint part (case and spaces ignored).
    st, _, body = upload(d, None, S.fx["b"], path="/v1/adapters/beta",
                         extra=[("base_fingerprint", b" %s\n" % S.fingerprint.upper().encode())])
    expect(st, body, 201, what="upload beta by path")
    check_adapter_object(body, "beta", 1, S.fx["b"])


def t_upload_curl(d, S):
    ad = S.fx["c"]
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-F",
         "config=@%s" % os.path.join(ad.path, "adapter_config.json"), "-F",
         "weights=@%s" % os.path.join(ad.path, "adapter_model.safetensors"),
         d.url + "/v1/adapters?name=gamma"], capture_output=True, timeout=30)
    body, _, code = out.stdout.decode().rpartition("\n")
    assert code == "201", "curl: %s %s %s" % (code, body, out.stderr.decode())
    check_adapter_object(json.loads(body), "gamma", 1, ad)


def t_versions(d, S):
    st, _, body = upload(d, "alpha", S.fx["a2"])
    expect(st, body, 201, what="re-upload alpha")
    check_adapter_object(body, "alpha", 2, S.fx["a2"])
    st, _, body = call(d, "GET", "/v1/adapters/alpha")
    expect(st, body, 200, what="GET alpha")
    assert body["object"] == "adapter.versions" and body["name"] == "alpha", body
    assert [a["id"] for a in body["data"]] == ["alpha@1", "alpha@2"], body
    assert body["aliases"] == [], body
    for v, key in ((1, "a1"), (2, "a2")):
        st, _, obj = call(d, "GET", "/v1/adapters/alpha@%d" % v)
        expect(st, obj, 200, what="GET alpha@%d" % v)
        check_adapter_object(obj, "alpha", v, S.fx[key])
    st, _, obj = call(d, "GET", "/v1/adapters/alpha%402")  # a percent-encoded '@'
    assert st == 200 and obj["id"] == "alpha@2", (st, obj)
    st, _, body = call(d, "GET", "/v1/adapters")
    expect(st, body, 200, what="GET list")
    assert body["object"] == "list", body
    assert [a["id"] for a in body["data"]] == ["alpha@2", "beta@1", "gamma@1"], body
    for spec in ("alpha@3", "nosuch", "alpha@0", "alpha@01"):
        st, _, body = call(d, "GET", "/v1/adapters/" + spec)
        assert st in (400, 404), (spec, st, body)
    st, _, body = call(d, "GET", "/v1/adapters/nosuch")
    expect(st, body, 404, "adapter_not_found", "GET unknown")


def t_completions(d, S):
    base = text_of(d, MODEL)
    for spec in ("alpha", "alpha@1", "alpha@2", "beta", "gamma@1"):
        st, _, body = complete(d, spec)
        expect(st, body, 200, what="completion " + spec)
        assert body["model"] == spec, body
        S.texts[spec] = body["choices"][0]["text"]
    assert S.texts["alpha"] == S.texts["alpha@2"], S.texts
    assert S.texts["alpha@1"] != S.texts["alpha@2"], "v1 and v2 give the same text: %r" % S.texts
    assert base != S.texts["alpha@1"] or base != S.texts["beta"], "adapters change nothing"
    st, _, body = complete(d, "nosuch")
    expect(st, body, 404, "model_not_found", "completion on an unknown adapter")


def t_aliases(d, S):
    st, _, body = call(d, "PUT", "/v1/aliases/prod", {"adapter": "alpha@1"})
    expect(st, body, 200, what="PUT prod")
    assert body["object"] == "alias" and body["name"] == "prod", body
    assert body["adapter"] == "alpha@1" and isinstance(body["updated"], int), body
    st, _, body = complete(d, "prod")
    expect(st, body, 200, what="completion prod")
    assert body["choices"][0]["text"] == S.texts["alpha@1"], (body, S.texts)
    st, _, body = call(d, "PUT", "/v1/aliases/prod", {"adapter": "alpha"})  # newest = @2
    assert st == 200 and body["adapter"] == "alpha@2", (st, body)
    assert text_of(d, "prod") == S.texts["alpha@2"]
    st, _, body = call(d, "GET", "/v1/adapters/prod")
    assert st == 200 and body["id"] == "alpha@2", (st, body)
    st, _, body = call(d, "GET", "/v1/aliases/prod")
    assert st == 200 and body["adapter"] == "alpha@2", (st, body)
    call(d, "PUT", "/v1/aliases/tmp-alias", {"adapter": "beta@1"})
    st, _, body = call(d, "GET", "/v1/aliases")
    expect(st, body, 200, what="GET aliases")
    assert body["object"] == "list", body
    assert [(a["name"], a["adapter"]) for a in body["data"]] == \
        [("prod", "alpha@2"), ("tmp-alias", "beta@1")], body
    st, _, body = call(d, "GET", "/v1/adapters/alpha")
    assert body["aliases"] == ["prod"], body
    st, _, body = call(d, "DELETE", "/v1/aliases/tmp-alias")
    expect(st, body, 200, what="DELETE alias")
    assert body == {"object": "alias.deleted", "name": "tmp-alias", "deleted": True}, body
    st, _, body = call(d, "GET", "/v1/aliases/tmp-alias")
    expect(st, body, 404, "alias_not_found", "GET deleted alias")
    st, _, body = call(d, "DELETE", "/v1/aliases/tmp-alias")
    expect(st, body, 404, "alias_not_found", "DELETE deleted alias")
    st, _, body = complete(d, "tmp-alias")
    expect(st, body, 404, "model_not_found", "completion on a deleted alias")
    # The shared namespace and bad bodies.
    st, _, body = call(d, "PUT", "/v1/aliases/beta", {"adapter": "alpha@1"})
    expect(st, body, 409, "name_conflict", "alias named like an adapter")
    st, _, body = upload(d, "prod", S.fx["a1"])
    expect(st, body, 409, "name_conflict", "upload named like an alias")
    st, _, body = call(d, "PUT", "/v1/aliases/x1", {"adapter": "nosuch@1"})
    expect(st, body, 404, "adapter_not_found", "alias to an unknown adapter")
    st, _, body = call(d, "PUT", "/v1/aliases/x1", {"adapter": "alpha@1", "frob": 1})
    expect(st, body, 400, "unknown_field", "alias body with an unknown field")
    st, _, body = call(d, "PUT", "/v1/aliases/x1", {})
    expect(st, body, 400, "missing_field", "alias body without adapter")
    st, _, body = call(d, "PUT", "/v1/aliases/-x", {"adapter": "alpha@1"})
    expect(st, body, 400, "invalid_name", "alias with a bad name")


def t_delete(d, S):
    # prod -> alpha@2: neither alpha nor alpha@2 may go.
    st, _, body = call(d, "DELETE", "/v1/adapters/alpha@2")
    expect(st, body, 409, "alias_conflict", "DELETE a version an alias points at")
    st, _, body = call(d, "DELETE", "/v1/adapters/alpha")
    expect(st, body, 409, "alias_conflict", "DELETE a name an alias points into")
    st, _, body = call(d, "DELETE", "/v1/adapters/alpha@1")
    expect(st, body, 200, what="DELETE alpha@1")
    assert body == {"object": "adapter.deleted", "id": "alpha@1", "deleted": True}, body
    st, _, body = complete(d, "alpha@1")
    expect(st, body, 404, "model_not_found", "completion on a deleted version")
    assert text_of(d, "alpha") == S.texts["alpha@2"], "alpha (@2) changed after deleting @1"
    st, _, body = call(d, "GET", "/v1/adapters/alpha@1")
    expect(st, body, 404, "adapter_not_found", "GET a deleted version")
    st, _, body = call(d, "DELETE", "/v1/adapters/alpha@1")
    expect(st, body, 404, "adapter_not_found", "DELETE twice")
    st, _, body = call(d, "GET", "/v1/adapters/alpha")
    assert [a["id"] for a in body["data"]] == ["alpha@2"], body
    # Versions are never reused: the next upload of alpha is @3 (same bytes as @1).
    st, _, body = upload(d, "alpha", S.fx["a1"])
    assert st == 201 and body["id"] == "alpha@3", (st, body)
    assert text_of(d, "alpha@3") == S.texts["alpha@1"]
    S.texts["alpha@3"] = S.texts["alpha@1"]
    S.texts["alpha"] = S.texts["alpha@1"]
    del S.texts["alpha@1"]
    S.texts["prod"] = S.texts["alpha@2"]
    # A whole name: every version goes.
    assert upload(d, "doomed", S.fx["b"])[0] == 201 and upload(d, "doomed", S.fx["c"])[0] == 201
    st, _, body = call(d, "DELETE", "/v1/adapters/doomed")
    assert st == 200 and body["id"] == "doomed@2" and body["deleted"] is True, (st, body)
    for spec in ("doomed", "doomed@1", "doomed@2"):
        st, _, body = complete(d, spec)
        expect(st, body, 404, "model_not_found", "completion on deleted " + spec)
    # beta's blob was shared with doomed@1: beta must still serve.
    assert text_of(d, "beta") == S.texts["beta"], "beta changed after deleting doomed"


def t_delete_inflight(d, S):
    """A request already running on a version finishes after its delete; new ones 404."""
    assert upload(d, "inflight", S.fx["c"])[0] == 201
    conn = http.client.HTTPConnection(d.host, d.port, timeout=30)
    try:
        conn.request("POST", "/v1/completions", json.dumps(
            {"model": "inflight", "prompt": PROMPT, "max_tokens": 400, "temperature": 0,
             "ignore_eos": True, "stream": True}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200, r.status
        first = r.readline()
        assert first.startswith(b"data: {"), first
        st, _, b = call(d, "DELETE", "/v1/adapters/inflight")
        expect(st, b, 200, what="DELETE during a stream")
        st, _, b = complete(d, "inflight")
        expect(st, b, 404, "model_not_found", "new request after the delete")
        rest = r.read().decode()
    finally:
        conn.close()
    events = [ln[6:] for ln in rest.split("\n") if ln.startswith("data: ")]
    assert events and events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks), [c for c in chunks if "error" in c]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length", chunks[-1]
    assert len(chunks) > 20, "the stream ended before the delete landed: %d chunks" % len(chunks)


BAD_NAMES = ["../x", "..%2fx", "%2e%2e", "/etc/passwd", "a/b", "n" * 65, "-lead",
             "trail ", "", ".hidden", "a@b", "a\\b", "nul%00x", "x\nX-Injected: 1"]


def t_bad_names(d, S):
    parent = os.path.dirname(DATA)
    before = snapshot(parent, DATA)
    tops = {p: set(os.listdir(p)) for p in (daemon.ROOT, os.path.dirname(daemon.ROOT), "/",
                                            daemon.TMP, DATA)}
    body, ctype = multipart(adapter_parts(S.fx["a1"]))
    fails = []
    for name in BAD_NAMES:
        # Query form: sent percent-encoded, so the daemon decodes it to exactly `name`
        # (for "..%2fx" that is the literal text "..%2fx", itself invalid).
        st, _, b = post_stream(d, "/v1/adapters?name=" + urllib.parse.quote(name, safe=""),
                               body, ctype)
        if st != 400 or err_code(b) != "invalid_name":
            fails.append("query %r: %d %r" % (name, st, b))
        # Query form with the name's bytes as they are (a raw '/' or '..').
        if all(c not in name for c in " \n\\") and name:
            st, _, b = post_stream(d, "/v1/adapters?name=" + name, body, ctype)
            if st != 400:
                fails.append("raw query %r: %d %r" % (name, st, b))
        # Path form: one segment, percent-encoded; or the raw text (several segments ->
        # no route, which is a 404, never an upload).
        st, _, b = post_stream(d, "/v1/adapters/" + urllib.parse.quote(name, safe=""),
                               body, ctype)
        if name and (st != 400 or err_code(b) != "invalid_name"):
            fails.append("path %r: %d %r" % (name, st, b))
        elif not name and st not in (400, 404):
            fails.append("empty path segment: %d %r" % (st, b))
        if all(c not in name for c in " \n\\") and name:
            st, _, b = post_stream(d, "/v1/adapters/" + name.lstrip("/"), body, ctype)
            if st not in (400, 404):
                fails.append("raw path %r: %d %r" % (name, st, b))
    # The query's name given twice, and an unknown parameter.
    st, _, b = post_stream(d, "/v1/adapters/ok1?name=ok1", body, ctype)
    if st != 400 or err_code(b) != "invalid_name":
        fails.append("name twice: %d %r" % (st, b))
    st, _, b = post_stream(d, "/v1/adapters?name=ok1&path=/etc", body, ctype)
    if st != 400 or err_code(b) != "unknown_parameter":
        fails.append("unknown parameter: %d %r" % (st, b))
    after = snapshot(parent, DATA)
    assert before == after, "files appeared next to DATA_DIR: %r" % sorted(after - before)
    for p, names in tops.items():
        new = set(os.listdir(p)) - names
        bad = {n for n in new if n in ("x", "b", "passwd", "etc", "a", "..", "-lead", "trail ",
                                      "n" * 65, "hidden", ".hidden") or n.startswith("..")}
        assert not bad, "new entries in %s: %r" % (p, bad)
    for dirpath, _, filenames in os.walk(DATA):
        for n in filenames:
            assert n in ("adapterd.db", "adapterd.db-wal", "adapterd.db-shm",
                         "adapterd.lock") or (len(n) == 64 and set(n) <= HEX), \
                "unexpected file %s" % os.path.join(dirpath, n)
    st, _, lst = call(d, "GET", "/v1/adapters")
    names = [a["name"] for a in lst["data"]]
    assert names == ["alpha", "beta", "gamma"], "bad names were indexed: %r" % names
    assert not fails, "\n".join(fails)
    # The limits themselves are fine: 64 characters, and every allowed character.
    for name in ("n" * 64, "A0._-z"):
        st, _, b = post_stream(d, "/v1/adapters?name=" + name, body, ctype)
        assert st == 201 and b["name"] == name, (name, st, b)
        st, _, b = call(d, "DELETE", "/v1/adapters/" + name)
        assert st == 200, (name, st, b)


def t_media_type(d, S):
    body, _ = multipart(adapter_parts(S.fx["a1"]))
    for ctype in ("application/json", "text/plain", "multipart/mixed; boundary=x",
                  "application/x-www-form-urlencoded"):
        st, h, b = post_stream(d, "/v1/adapters?name=mt", body, ctype)
        expect(st, b, 415, "unsupported_media_type", ctype)
    st, _, b = post_stream(d, "/v1/adapters?name=mt", body, "multipart/form-data")
    expect(st, b, 400, "invalid_multipart", "multipart without a boundary")
    st, _, b = call(d, "GET", "/v1/adapters/mt")
    assert st == 404, (st, b)


def raw_head(d, length, expect_continue):
    head = ("POST /v1/adapters?name=huge HTTP/1.1\r\nHost: t\r\n"
            "Content-Type: multipart/form-data; boundary=zzz\r\nContent-Length: %d\r\n"
            % length)
    if expect_continue:
        head += "Expect: 100-continue\r\n"
    return (head + "\r\n").encode()


def read_first_status(s, timeout=5.0):
    """The first response head on s, interim ones included: (status line, rest)."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\r\n", 1)[0].decode("latin-1"), buf


def t_too_large(d, S):
    big = MAX_UPLOAD + SLACK + 1
    # Expect: 100-continue: the first (and only) answer is the 413, never a 100.
    s = d.connect()
    try:
        s.sendall(raw_head(d, big, True))
        line, buf = read_first_status(s)
        assert line.startswith("HTTP/1.1 413"), "with Expect: first answer %r" % buf[:300]
        s._rest = buf
        r = read_response(s)
        assert json.loads(r[2])["error"]["code"] == "too_large", r
    finally:
        s.close()
    # ...while an acceptable head with Expect gets its 100 Continue, then the 201.
    body, ctype = multipart(adapter_parts(S.fx["a1"]))
    s = d.connect()
    try:
        s.sendall(("POST /v1/adapters?name=expect-ok HTTP/1.1\r\nHost: t\r\nContent-Type: %s"
                   "\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                   % (ctype, len(body))).encode())
        line, buf = read_first_status(s, timeout=3)
        assert line.startswith("HTTP/1.1 100"), "acceptable head: first answer %r" % buf[:300]
        s._rest = buf.split(b"\r\n\r\n", 1)[1]
        s.sendall(body)
        r = read_response(s)
        assert r[0] == 201 and json.loads(r[2])["id"] == "expect-ok@1", r
    finally:
        s.close()
    st, b = call(d, "DELETE", "/v1/adapters/expect-ok")[::2]
    assert st == 200, (st, b)
    # Plain: only the head is sent, the 413 must come from Content-Length alone.
    s = d.connect()
    try:
        s.sendall(raw_head(d, big, False))
        r = read_response(s)
        assert r is not None, "no answer to the head"
        assert r[0] == 413 and json.loads(r[2])["error"]["code"] == "too_large", r
        rest, closed = recv_all(s, timeout=5)
        assert closed, "connection still open after the 413"
    finally:
        s.close()
    # Plain, with the body on its way (the server closes; the client may see a reset).
    body, ctype = multipart([("config", S.fx["a1"].config),
                             ("weights", b"\0" * (MAX_UPLOAD + SLACK))])
    st, _, b = post_stream(d, "/v1/adapters?name=huge", body, ctype, chunk=16384)
    expect(st, b, 413, "too_large", "oversized body sent")
    # Under the Content-Length cap but the weights part over --max-upload-bytes.
    body, ctype = multipart([("config", S.fx["a1"].config),
                             ("weights", b"\0" * (MAX_UPLOAD + 1000))])
    assert len(body) <= MAX_UPLOAD + SLACK
    st, _, b = post_stream(d, "/v1/adapters?name=huge", body, ctype)
    expect(st, b, 413, "too_large", "weights part over the cap")
    # The config part over 64 KiB.
    body, ctype = multipart([("config", b" " * (SLACK + 10)), ("weights", S.fx["a1"].weights)])
    st, _, b = post_stream(d, "/v1/adapters?name=huge", body, ctype)
    expect(st, b, 413, "too_large", "config part over 64 KiB")
    st, _, b = call(d, "GET", "/v1/adapters/huge")
    assert st == 404, (st, b)
    assert d.alive()


def t_invalid_adapters(d, S):
    st, _, b = upload(d, "other", S.fx["other"])
    expect(st, b, 422, "mismatch", "adapter for another base")
    assert "q_proj" in b["error"]["message"] or "shape" in b["error"]["message"], b
    # Malformed safetensors: a header length past the end, garbage JSON, truncated data.
    w = S.fx["a1"].weights
    n = int.from_bytes(w[:8], "little")
    bad = {
        "huge header length": (10 ** 12).to_bytes(8, "little") + w[8:],
        "garbage header": n.to_bytes(8, "little") + b"{" * n + w[8 + n:],
        "truncated data": w[:-100],
        "8 bytes": w[:8],
        "empty": b"",
    }
    fails = []
    for what, weights in bad.items():
        body, ctype = multipart([("config", S.fx["a1"].config), ("weights", weights)])
        st, _, b = post_stream(d, "/v1/adapters?name=bad-st", body, ctype)
        if st != 422:
            fails.append("%s: %d %r" % (what, st, b))
        elif err_code(b) not in ("format", "invalid"):
            # Documented codes for a file that does not parse are format/invalid; a corrupt
            # header length is answered adapter_too_large (the parser's RC_LIMIT), which
            # points the client at the cache budget. Reported, not failed.
            print("# note: %s -> 422 %s (%s)" % (what, err_code(b), b["error"]["message"]))
    # A config that is not JSON, and one for DoRA.
    cfg = json.loads(S.fx["a1"].config)
    cfg["use_dora"] = True
    for what, config in (("config not JSON", b"{nope"),
                         ("DoRA", json.dumps(cfg).encode())):
        body, ctype = multipart([("config", config), ("weights", w)])
        st, _, b = post_stream(d, "/v1/adapters?name=bad-st", body, ctype)
        if st != 422:
            fails.append("%s: %d %r" % (what, st, b))
    st, _, b = upload(d, "bad-fp", S.fx["a1"], extra=[("base_fingerprint", b"0" * 64)])
    if st != 422 or err_code(b) != "base_mismatch":
        fails.append("base_fingerprint: %d %r" % (st, b))
    assert not fails, "\n".join(fails)
    for n in ("other", "bad-st", "bad-fp"):
        assert call(d, "GET", "/v1/adapters/" + n)[0] == 404, n


def t_bad_multipart(d, S):
    body, ctype = multipart(adapter_parts(S.fx["a1"]))
    cut = body[:-len(b"--\r\n") - 40]  # ends inside the weights part, before the close
    st, _, b = post_stream(d, "/v1/adapters?name=trunc", cut, ctype)
    expect(st, b, 400, "invalid_multipart", "truncated multipart")
    st, _, b = post_stream(d, "/v1/adapters?name=trunc", b"garbage" * 10, ctype)
    expect(st, b, 400, "invalid_multipart", "no delimiter at all")
    body, ctype = multipart([("config", S.fx["a1"].config)])
    st, _, b = post_stream(d, "/v1/adapters?name=trunc", body, ctype)
    expect(st, b, 400, "missing_part", "no weights")
    body, ctype = multipart(adapter_parts(S.fx["a1"]) + [("path", b"/etc/passwd")])
    st, _, b = post_stream(d, "/v1/adapters?name=trunc", body, ctype)
    expect(st, b, 400, "unknown_part", "extra part")
    body, ctype = multipart(adapter_parts(S.fx["a1"]) + [("config", S.fx["a1"].config)])
    st, _, b = post_stream(d, "/v1/adapters?name=trunc", body, ctype)
    expect(st, b, 400, "duplicate_part", "config twice")
    assert call(d, "GET", "/v1/adapters/trunc")[0] == 404
    assert os.listdir(os.path.join(DATA, "tmp")) == [], os.listdir(os.path.join(DATA, "tmp"))


def t_pin(d, S):
    st, _, b = call(d, "POST", "/v1/adapters/gamma/pin")
    expect(st, b, 200, what="pin gamma")
    assert b["id"] == "gamma@1" and b["pinned"] is True and b["resident"] is True, b
    st, _, b = call(d, "GET", "/v1/adapters/gamma@1")
    assert b["pinned"] is True, b
    st, _, b = call(d, "POST", "/v1/adapters/beta/pin", {})
    assert st == 200 and b["pinned"] is True, (st, b)
    st, _, b = call(d, "POST", "/v1/adapters/beta/unpin")
    expect(st, b, 200, what="unpin beta")
    assert b["pinned"] is False, b
    st, _, b = call(d, "POST", "/v1/adapters/nosuch/pin")
    expect(st, b, 404, "adapter_not_found", "pin unknown")
    st, _, b = call(d, "POST", "/v1/adapters/prod/pin")  # an alias pins its target
    assert st == 200 and b["id"] == "alpha@2" and b["pinned"], (st, b)
    st, _, b = call(d, "POST", "/v1/adapters/alpha@2/unpin")
    assert st == 200 and not b["pinned"], (st, b)
    # gamma stays pinned: the restart checks that the pin survived.


def t_vllm_disabled(d, S):
    for path, body in (("/v1/load_lora_adapter", {"lora_name": "v", "lora_path": VROOT}),
                       ("/v1/unload_lora_adapter", {"lora_name": "alpha"})):
        st, _, b = call(d, "POST", path, body)
        expect(st, b, 404, "not_found", path + " without --allow-local-adapter-paths")
    assert call(d, "GET", "/v1/adapters/alpha")[0] == 200


def t_cold_load(d, S):
    st, _, b = upload(d, "cold", S.fx["cold"])
    assert st == 201 and b["resident"] is False, (st, b)
    results = {}

    def one(key, model):
        try:
            results[key] = complete(d, model, max_tokens=16)[:3:2]
        except Exception as e:  # noqa: BLE001
            results[key] = (None, repr(e))

    threads = [threading.Thread(target=one, args=("cold", "cold"))]
    threads += [threading.Thread(target=one, args=("base%d" % i, MODEL)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    bad = {k: v for k, v in results.items() if v[0] != 200}
    assert len(results) == 7 and not bad, "failed: %r" % bad
    st, _, b = call(d, "GET", "/v1/adapters/cold@1")
    assert b["resident"] is True and b["loading"] is False, b
    S.texts["cold"] = text_of(d, "cold")  # the 8-token text the restart compares


def t_record(d, S):
    st, _, b = call(d, "GET", "/v1/adapters")
    S.ids = [a["id"] for a in b["data"]]
    assert S.ids == ["alpha@3", "beta@1", "cold@1", "gamma@1"], S.ids
    for spec, text in S.texts.items():
        assert text_of(d, spec) == text, spec


# ---- daemon B: restart and vLLM --------------------------------------------------------------

def t_restart(d, S):
    st, _, b = call(d, "GET", "/v1/adapters")
    assert [a["id"] for a in b["data"]] == S.ids, (b, S.ids)
    st, _, b = call(d, "GET", "/v1/adapters/alpha")
    assert [a["id"] for a in b["data"]] == ["alpha@2", "alpha@3"], b
    assert b["aliases"] == ["prod"], b
    st, _, b = call(d, "GET", "/v1/aliases")
    assert [(a["name"], a["adapter"]) for a in b["data"]] == [("prod", "alpha@2")], b
    st, _, b = call(d, "GET", "/v1/adapters/gamma@1")
    assert b["pinned"] is True and b["resident"] is True, "pin lost on restart: %r" % b
    assert b["requests"] >= 1, "request count not kept: %r" % b
    changed = {s: (t, text_of(d, s)) for s, t in S.texts.items() if text_of(d, s) != t}
    assert not changed, "outputs changed across the restart: %r" % changed
    for spec in ("alpha@1", "doomed", "doomed@2", "tmp-alias"):
        st, _, b = complete(d, spec)
        expect(st, b, 404, "model_not_found", "deleted %s after restart" % spec)
    assert os.listdir(os.path.join(DATA, "tmp")) == []


def make_vllm_dirs(S):
    cfg = base_config()
    os.makedirs(VROOT)
    S.fx["v1"] = make_adapter(os.path.join(VROOT, "good"), cfg, seed=41)
    S.fx["v2"] = make_adapter(os.path.join(VROOT, "nested", "deeper"), cfg, seed=42)
    make_adapter(os.path.join(ROOTS, "x"), cfg, seed=43)        # next to the root
    make_adapter(os.path.join(ROOTS, "root2"), cfg, seed=44)    # shares the root's prefix
    make_adapter(os.path.join(WORK, "outside"), cfg, seed=45)
    os.symlink(os.path.join(WORK, "outside"), os.path.join(VROOT, "link"))
    os.symlink("/etc", os.path.join(VROOT, "etc-link"))
    # Files that are symlinks: to outside every root (refused), and the Hugging Face hub
    # cache layout, snapshots/REV/FILE -> ../../blobs/HASH inside the root (accepted).
    os.makedirs(os.path.join(VROOT, "file-links"))
    os.makedirs(os.path.join(VROOT, "passwd-link"))
    for fn in ("adapter_config.json", "adapter_model.safetensors"):
        os.symlink(os.path.join(WORK, "outside", fn), os.path.join(VROOT, "file-links", fn))
    os.symlink("/etc/passwd", os.path.join(VROOT, "passwd-link", "adapter_config.json"))
    shutil.copyfile(os.path.join(WORK, "outside", "adapter_model.safetensors"),
                    os.path.join(VROOT, "passwd-link", "adapter_model.safetensors"))
    hub = os.path.join(VROOT, "hub")
    os.makedirs(os.path.join(hub, "blobs"))
    os.makedirs(os.path.join(hub, "snapshots", "rev1"))
    for fn in ("adapter_config.json", "adapter_model.safetensors"):
        h = hashlib.sha256(fn.encode()).hexdigest()
        shutil.copyfile(os.path.join(VROOT, "good", fn), os.path.join(hub, "blobs", h))
        os.symlink(os.path.join("..", "..", "blobs", h), os.path.join(hub, "snapshots", "rev1", fn))
    os.makedirs(os.path.join(VROOT, "bad"))
    shutil.copyfile(os.path.join(FX, "other", "adapter_config.json"),
                    os.path.join(VROOT, "bad", "adapter_config.json"))
    shutil.copyfile(os.path.join(FX, "other", "adapter_model.safetensors"),
                    os.path.join(VROOT, "bad", "adapter_model.safetensors"))


def t_vllm(d, S):
    load, unload = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
    st, h, b = d.request("POST", load, {"lora_name": "vl", "lora_path":
                                        os.path.join(VROOT, "good"), "load_inplace": False})
    assert st == 200, (st, b)
    assert h["content-type"].startswith("text/plain"), h
    assert b.decode() == "Success: LoRA adapter 'vl' added successfully.", b
    st, _, obj = call(d, "GET", "/v1/adapters/vl@1")
    assert st == 200 and obj["sha256"] == S.fx["v1"].sha256, (st, obj)
    st, _, b2 = complete(d, "vl")
    expect(st, b2, 200, what="completion on a vLLM-loaded adapter")
    st, _, b = call(d, "POST", load, {"lora_name": "vl", "lora_path":
                                      os.path.join(VROOT, "nested", "deeper")})
    expect(st, b, 400, "adapter_exists", "load twice")
    assert b["error"]["message"] == "The lora adapter 'vl' has already been loaded.", b
    st, _, b = call(d, "POST", load, {"lora_name": "alpha", "lora_path":
                                      os.path.join(VROOT, "good")})
    expect(st, b, 400, "adapter_exists", "load over an uploaded name")
    st, _, b = call(d, "POST", load, {"lora_name": "prod", "lora_path":
                                      os.path.join(VROOT, "good")})
    expect(st, b, 400, "name_conflict", "load as an alias name")
    paths = {
        "outside every root": os.path.join(WORK, "outside"),
        "root/../x": VROOT + "/../x",
        "root/../../outside": VROOT + "/../../outside",
        "sibling sharing the root's prefix": os.path.join(ROOTS, "root2"),
        "symlink inside root to outside": os.path.join(VROOT, "link"),
        "symlink inside root to /etc": os.path.join(VROOT, "etc-link"),
        "missing inside root": os.path.join(VROOT, "missing"),
        "a file inside root": os.path.join(VROOT, "good", "adapter_config.json"),
        "/etc": "/etc",
        "relative": "good",
        "empty": "",
    }
    fails, messages = [], set()
    for what, p in paths.items():
        st, _, b = call(d, "POST", load, {"lora_name": "evil", "lora_path": p})
        if st != 400 or err_code(b) not in ("invalid_path", "invalid_value"):
            fails.append("%s (%s): %d %r" % (what, p, st, b))
        elif what in ("outside every root", "missing inside root", "root/../x"):
            messages.add(b["error"]["message"].replace(p, "PATH"))
    if len(messages) > 1:
        fails.append("messages tell outside from missing: %r" % messages)
    st, _, b = call(d, "POST", load, {"lora_name": "evil", "lora_path": os.path.join(VROOT, "bad")})
    if st != 422:
        fails.append("an invalid adapter inside root: %d %r" % (st, b))
    st, _, b = call(d, "POST", load, {"lora_name": "../evil", "lora_path":
                                      os.path.join(VROOT, "good")})
    if st != 400 or err_code(b) != "invalid_name":
        fails.append("bad lora_name: %d %r" % (st, b))
    st, _, b = call(d, "POST", load, {"lora_name": "evil", "lora_path": VROOT + "/good",
                                      "frob": 1})
    if st != 400 or err_code(b) != "unknown_field":
        fails.append("unknown field: %d %r" % (st, b))
    if call(d, "GET", "/v1/adapters/evil")[0] != 404:
        fails.append("evil was indexed")
    assert not fails, "\n".join(fails)
    st, h, b = d.request("POST", unload, {"lora_name": "vl", "lora_int_id": 3})
    assert st == 200 and h["content-type"].startswith("text/plain"), (st, h, b)
    assert b.decode() == "Success: LoRA adapter 'vl' removed successfully.", b
    st, _, b = complete(d, "vl")
    expect(st, b, 404, "model_not_found", "completion after unload")
    st, _, b = call(d, "POST", unload, {"lora_name": "vl"})
    expect(st, b, 404, "adapter_not_found", "unload twice")
    assert b["error"]["message"] == "The lora adapter 'vl' cannot be found.", b
    st, _, b = call(d, "POST", unload, {"lora_name": "alpha"})
    expect(st, b, 409, "alias_conflict", "unload a name an alias points into")
    # Load again after the unload: a new version of the name.
    st, _, b = call(d, "POST", load, {"lora_name": "vl", "lora_path":
                                      os.path.join(VROOT, "nested", "deeper")})
    assert st == 200, (st, b)
    st, _, obj = call(d, "GET", "/v1/adapters/vl")
    assert [a["id"] for a in obj["data"]] == ["vl@2"], obj
    text_of(d, "vl@2")


def t_vllm_file_symlinks(d, S):
    load, unload = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
    st, _, b = call(d, "POST", load, {"lora_name": "hub", "lora_path":
                                      os.path.join(VROOT, "hub", "snapshots", "rev1")})
    assert st == 200, "hub cache layout inside the root: %d %r" % (st, b)
    assert call(d, "POST", unload, {"lora_name": "hub"})[0] == 200
    fails = []
    st, _, b = call(d, "POST", load, {"lora_name": "flinks", "lora_path":
                                      os.path.join(VROOT, "file-links")})
    if st != 400:
        fails.append("a folder inside the root whose files link outside every root: %d %r"
                     % (st, b))
    st, _, b = call(d, "POST", load, {"lora_name": "plink", "lora_path":
                                      os.path.join(VROOT, "passwd-link")})
    with open("/etc/passwd") as f:
        first = f.readline().strip()[:24]  # e.g. "root:x:0:0:root:/root:/b"
    msg = b["error"]["message"] if isinstance(b, dict) and "error" in b else str(b)
    if st == 200 or (first and first in msg) or "expected near" in msg:
        fails.append("adapter_config.json -> /etc/passwd: %d, the message shows the file's "
                     "text (%r): %r" % (st, first, msg))
    assert not fails, "\n".join(fails)


# ---- daemon C: a bit-flipped blob ------------------------------------------------------------

def flip_blob(S):
    path = os.path.join(DATA, "blobs", S.fx["b"].sha256)
    with open(path, "r+b") as f:
        f.seek(len(S.fx["b"].weights) - 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))


def t_broken(d, S):
    st, h, b = complete(d, "beta")
    expect(st, b, 503, "adapter_unavailable", "completion on a flipped blob")
    S.broken_headers = h
    st, h, b = complete(d, "beta@1")
    expect(st, b, 503, "adapter_unavailable", "again, by version")
    st, _, b = call(d, "GET", "/v1/adapters/beta")
    if b["data"][0]["state"] != "broken":
        # The broken mark is written by a store task after the failed load answered:
        # listings catch up a moment later.
        print("# note: GET right after the 503 still shows state %r" % b["data"][0]["state"])
    deadline = time.time() + 3
    while b["data"][0]["state"] != "broken" and time.time() < deadline:
        time.sleep(0.05)
        st, _, b = call(d, "GET", "/v1/adapters/beta")
    assert st == 200 and b["data"][0]["state"] == "broken", (st, b)
    assert b["data"][0].get("reason"), b
    print("# broken reason: %s" % b["data"][0]["reason"])
    st, _, b = call(d, "GET", "/v1/adapters/beta@1")
    assert b["state"] == "broken" and b["resident"] is False, b
    others = {s: t for s, t in S.texts.items() if not s.startswith("beta")}
    changed = {s: t for s, t in others.items() if text_of(d, s) != t}
    assert not changed, "other adapters changed: %r" % changed


# ---- daemon D: the cache budget --------------------------------------------------------------

def t_budget(S):
    small = 3584  # memory_bytes of a rank-2 q_proj+v_proj adapter of the tiny model
    data = os.path.join(WORK, "data-budget")
    d = daemon.Daemon(["--model-name", MODEL, "--adapter-cache-bytes", str(small + small // 2),
                       "--adapter-load-wait-ms", "300"], data_dir=data)
    try:
        st, _, b = upload(d, "s1", S.fx["a1"])
        assert st == 201 and b["memory_bytes"] == small, (st, b)
        assert upload(d, "s2", S.fx["b"])[0] == 201
        st, _, b = upload(d, "big", S.fx["big"])
        expect(st, b, 422, "adapter_too_large", "upload over the cache budget")
        assert call(d, "GET", "/v1/adapters/big")[0] == 404
        assert text_of(d, "s1") == S.texts["alpha@3"]
        assert text_of(d, "s2") == S.texts["beta"]  # evicts s1
        st, _, b = call(d, "POST", "/v1/adapters/s1/pin")
        assert st == 200 and b["pinned"], (st, b)
        st, _, b = call(d, "POST", "/v1/adapters/s2/pin")
        expect(st, b, 413, "adapter_too_large", "pins over the budget")
        st, _, b = call(d, "GET", "/v1/adapters/s2@1")
        assert b["pinned"] is False, b
        assert call(d, "POST", "/v1/adapters/s1/unpin")[0] == 200
        st, _, b = call(d, "POST", "/v1/adapters/s2/pin")
        assert st == 200 and b["pinned"], (st, b)
        assert text_of(d, "s2") == S.texts["beta"]
        # s2 pinned takes the cache: s1 cannot load, and waits --adapter-load-wait-ms.
        t = time.time()
        st, h, b = complete(d, "s1")
        waited = time.time() - t
        assert st == 503 and waited >= 0.25, (st, h, b, waited)
        # The contract's code for this case (notes/admin_api.md, docs/API.md flags).
        S.cache_full = (st, h, b)
        assert call(d, "POST", "/v1/adapters/s2/unpin")[0] == 200
        assert text_of(d, "s1") == S.texts["alpha@3"]  # s2 idle now: evicted
    finally:
        rc = d.stop()
    assert rc == 0, "daemon exit %r" % rc
    # A smaller budget on the same index: the adapters are now larger than the whole cache.
    d = daemon.Daemon(["--model-name", MODEL, "--adapter-cache-bytes", str(small - 1)],
                      data_dir=data)
    try:
        st, _, b = complete(d, "s1")
        expect(st, b, 422, "adapter_too_large", "completion on an adapter over the budget")
        assert text_of(d, MODEL)
    finally:
        rc = d.stop()
    assert rc == 0, "daemon exit %r" % rc


# ---- main -------------------------------------------------------------------------------------

def main():
    tap = daemon.Tap()
    t0 = time.time()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(DATA)
    S = State()
    cfg = base_config()
    S.fx = {
        "a1": make_adapter(os.path.join(FX, "a1"), cfg, seed=11),
        "a2": make_adapter(os.path.join(FX, "a2"), cfg, seed=12),
        "b": make_adapter(os.path.join(FX, "b"), cfg, seed=13),
        "c": make_adapter(os.path.join(FX, "c"), cfg, seed=14, r=3, alpha=6.0,
                          targets=("q_proj", "k_proj", "o_proj")),
        "cold": make_adapter(os.path.join(FX, "cold"), cfg, seed=15, r=8, alpha=16.0,
                             targets=hf_fixtures.MODULES),
        "big": make_adapter(os.path.join(FX, "big"), cfg, seed=16, r=4, alpha=8.0),
    }
    other_cfg = dict(cfg, hidden_size=32, intermediate_size=64)
    S.fx["other"] = make_adapter(os.path.join(FX, "other"), other_cfg, seed=17)
    make_vllm_dirs(S)
    ok = True

    d = daemon.Daemon(["--model-name", MODEL, "--max-upload-bytes", str(MAX_UPLOAD)],
                      data_dir=DATA)
    try:
        ok &= tap.run("upload streamed in chunks: 201 with the adapter object", t_upload_stream,
                      d, S)
        if shutil.which("curl"):
            ok &= tap.run("upload with curl -F: 201", t_upload_curl, d, S)
        else:
            tap.skip("upload with curl -F", "no curl")
            assert upload(d, "gamma", S.fx["c"])[0] == 201
        ok &= tap.run("re-upload is version 2; GET list, NAME, NAME@V", t_versions, d, S)
        ok &= tap.run("completions on NAME, NAME@V", t_completions, d, S)
        ok &= tap.run("aliases: PUT, repoint, GET, DELETE, conflicts", t_aliases, d, S)
        ok &= tap.run("delete NAME@V and NAME; 409 under an alias; versions not reused",
                      t_delete, d, S)
        tap.run("delete while a request streams on it: the stream finishes, new ones 404",
                t_delete_inflight, d, S)
        tap.run("hostile names -> 400, no file outside DATA_DIR", t_bad_names, d, S)
        tap.run("not multipart/form-data -> 415", t_media_type, d, S)
        tap.run("over --max-upload-bytes -> 413 before the body (Expect: 100-continue too)",
                t_too_large, d, S)
        tap.run("another base's adapter, malformed safetensors -> 422", t_invalid_adapters,
                d, S)
        tap.run("truncated / malformed multipart -> 400", t_bad_multipart, d, S)
        ok &= tap.run("pin / unpin", t_pin, d, S)
        tap.run("vLLM load/unload disabled by default -> 404", t_vllm_disabled, d, S)
        ok &= tap.run("cold load while base requests are answered", t_cold_load, d, S)
        ok &= tap.run("state recorded before the restart", t_record, d, S)
    finally:
        rc = d.stop()
    tap.check(rc == 0, "daemon A exits 0 on SIGTERM", "exit %r\n%s" % (rc, d.log()[-2000:]))

    if ok:
        d = daemon.Daemon(["--model-name", MODEL, "--allow-local-adapter-paths", "1",
                           "--adapter-roots", VROOT], data_dir=DATA)
        try:
            tap.run("restart on the same data dir: everything listed and serving", t_restart,
                    d, S)
            tap.run("vLLM load/unload with --adapter-roots", t_vllm, d, S)
            tap.run("vLLM load: files symlinked outside every root are refused, unechoed",
                    t_vllm_file_symlinks, d, S)
        finally:
            rc = d.stop()
        tap.check(rc == 0, "daemon B exits 0", "exit %r" % rc)

        flip_blob(S)
        d = daemon.Daemon(["--model-name", MODEL], data_dir=DATA)
        try:
            S.broken_headers = None
            tap.run("bit-flipped blob: 503 adapter_unavailable, state broken, others fine",
                    t_broken, d, S)
            if S.broken_headers is not None:
                tap.check("retry-after" in S.broken_headers,
                          "503 adapter_unavailable carries Retry-After", S.broken_headers)
        finally:
            rc = d.stop()
        tap.check(rc == 0, "daemon C exits 0", "exit %r" % rc)
    else:
        tap.skip("restart, vLLM and bit-flip tests", "an earlier test they build on failed")

    S.cache_full = None
    tap.run("--adapter-cache-bytes: upload 422 adapter_too_large, pins 413, wait 503", t_budget, S)
    if S.cache_full:
        st, h, b = S.cache_full
        tap.check(err_code(b) == "cache_full" and "retry-after" in h,
                  "no cache room within --adapter-load-wait-ms -> 503 cache_full with "
                  "Retry-After", "got %d %r %r" % (st, h, b))
    print("# wall %.1f s" % (time.time() - t0))
    rc = tap.done()
    if rc == 0 and not os.environ.get("KEEP_TMP"):
        shutil.rmtree(WORK, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
