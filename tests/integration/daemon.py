"""daemon.py - run build/adapterd on 127.0.0.1 for integration tests.

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import daemon
    with daemon.Daemon(["--header-timeout-ms", "500"]) as d:
        status, headers, body = d.request("GET", "/healthz")

Daemon() picks a free port (bind to port 0 in Python, then hand the number to the daemon),
makes a fresh data dir under tests/tmp/, starts $BUILD/adapterd (or $ADAPTERD_BIN), and waits
until GET /healthz answers 200. stop() sends SIGTERM and returns the exit status. The model
defaults to tiny_model(): a small synthetic Llama written by tools/hf_fixtures.make_llama with
the Llama-2 tokenizer.json, generated once into tests/tmp/ and reused.

Also: Tap (TAP output helper), read_response (parse one HTTP/1.1 response from a raw socket).
Run with /usr/bin/python3 (numpy is needed to generate the model).
"""

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TMP = os.path.join(ROOT, "tests", "tmp")
BUILD = os.environ.get("BUILD", "build")
TOKENIZER_DIR = os.path.join(ROOT, "node_modules", "@lenml", "tokenizer-llama2", "models")

# Small enough to load in well under a second, real enough for the Llama-2 tokenizer.
TINY_CONFIG = {
    "vocab_size": 32000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
TINY_SEED = 7


def binary():
    path = os.environ.get("ADAPTERD_BIN") or os.path.join(ROOT, BUILD, "adapterd")
    if not os.path.isabs(path):
        path = os.path.join(ROOT, path)
    return path


def tiny_model(name="tiny-llama", cfg=None, seed=TINY_SEED):
    """Path of tests/tmp/models/NAME, generated on first use (atomically: written under a
    temporary name, then renamed, so concurrent or interrupted runs never see half a model)."""
    final = os.path.join(TMP, "models", name)
    if os.path.exists(os.path.join(final, "config.json")):
        return final
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import hf_fixtures  # noqa: E402 (needs numpy: run with /usr/bin/python3)
    tmp = "%s.tmp-%d" % (final, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    c = dict(TINY_CONFIG)
    c.update(cfg or {})
    hf_fixtures.make_llama(tmp, c, seed=seed, tie=True)
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(TOKENIZER_DIR, fn), os.path.join(tmp, fn))
    try:
        os.rename(tmp, final)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return final


_SANITIZER = []


def sanitizer():
    """"asan", "tsan" or None: how the daemon binary was built (make asan / make tsan)."""
    if not _SANITIZER:
        with open(binary(), "rb") as f:
            data = f.read()
        _SANITIZER.append("tsan" if b"__tsan_init" in data else
                          "asan" if b"__asan_init" in data else None)
    return _SANITIZER[0]


def sanitized():
    return sanitizer() is not None


def slowdown():
    """How much longer than the plain build a time bound may take: a sanitizer build computes
    several times slower (ThreadSanitizer 5-15x), so tests scale their wall-clock bounds by
    this rather than failing on speed they were not written to measure."""
    return {"asan": 4.0, "tsan": 10.0}.get(sanitizer(), 1.0)


def rss_kib(pid):
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def n_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def metrics(d):
    """The unlabelled series of d's GET /metrics -> {name: float}."""
    st, _, body = d.request("GET", "/metrics", timeout=10)
    assert st == 200, "GET /metrics: %d" % st
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, val = line.partition(" ")
            out[name] = float(val)
    return out


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonError(Exception):
    pass


class RawSocket(socket.socket):
    """A socket that can carry the unread rest of a previous read_response."""
    _rest = b""


_running = []  # every Daemon started by this process; killed at exit if a test forgot


@atexit.register
def _kill_leftovers():
    for d in _running:
        d.kill()


class Daemon:
    """One adapterd process. args: extra command-line flags; model: a model folder
    (default tiny_model()); data_dir: default a fresh tests/tmp/daemon-PORT/data."""

    def __init__(self, args=(), model=None, data_dir=None, env=None, name="adapterd",
                 start=True, timeout=60.0):
        self.host = "127.0.0.1"
        self.args = list(args)
        self.model = model
        self.data_dir = data_dir
        self.env = env
        self.name = name
        self.proc = None
        self.port = None
        self.work = None
        self.stdout_path = self.stderr_path = None
        if start:
            self.start(timeout)

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def start(self, timeout=60.0):
        model = self.model or tiny_model()
        for attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            work = os.path.join(TMP, "daemon-%d" % self.port)
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            data = self.data_dir or os.path.join(work, "data")
            os.makedirs(data, exist_ok=True)
            self.work = work
            self.stdout_path = os.path.join(work, "stdout.log")
            self.stderr_path = os.path.join(work, "stderr.log")
            cmd = [binary(), "serve", "--host", self.host, "--port", str(self.port),
                   "--model", model, "--data-dir", data] + self.args
            env = dict(os.environ)
            env.update(self.env or {})
            with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
            _running.append(self)
            if self._wait_ready(timeout):
                return self
            if "address already in use" not in self.log().lower():
                break
        tail = self.log()[-3000:]
        self.kill()
        raise DaemonError("adapterd did not become ready (cmd: %s)\n%s" % (" ".join(cmd), tail))

    def _wait_ready(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, _, _ = self.request("GET", "/healthz", timeout=1.0)
                if status == 200:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        return False

    def log(self):
        """stdout + stderr of the daemon so far."""
        text = ""
        for p in (self.stdout_path, self.stderr_path):
            if p and os.path.exists(p):
                with open(p, "rb") as f:
                    text += f.read().decode("utf-8", "replace")
        return text

    def request(self, method, path, body=None, headers=None, timeout=10.0):
        """One request on a fresh connection -> (status, headers dict (lower-case), body)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
                headers = dict(headers or {})
                headers.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def connect(self, timeout=10.0):
        """A raw TCP socket to the daemon (a RawSocket: read_response keeps bytes beyond one
        response on it)."""
        s = RawSocket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect((self.host, self.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def alive(self):
        """Still running and /healthz answers 200 within 1 s."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return self.request("GET", "/healthz", timeout=1.0)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        """Signal the daemon and wait; returns its exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        if self.proc.returncode == 0 and self.work and not os.environ.get("KEEP_TMP"):
            shutil.rmtree(self.work, ignore_errors=True)  # keep logs of failures only
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def read_response(sock, timeout=5.0, head_request=False):
    """Read one HTTP/1.1 response from a raw socket (Content-Length, chunked or
    close-delimited body). Returns (status, headers dict (lower-case), body bytes) or None
    when the connection closed before a status line. Bytes beyond the response are kept on
    the socket object for the next call."""
    sock.settimeout(timeout)
    buf = getattr(sock, "_rest", b"")

    def fill():
        nonlocal buf
        chunk = sock.recv(65536)
        buf += chunk
        return len(chunk) > 0

    while b"\r\n\r\n" not in buf:
        if not fill():
            if buf:
                raise DaemonError("connection closed inside a response head: %r" % buf[:200])
            sock._rest = b""
            return None
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    if status < 200:  # interim (100 Continue): the real response follows
        sock._rest = buf
        return read_response(sock, timeout, head_request)
    body = b""
    if head_request or status in (204, 304):
        pass
    elif "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n and fill():
            pass
        body, buf = buf[:n], buf[n:]
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in buf and fill():
                pass
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2 and fill():
                pass
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                break
    else:
        while fill():
            pass
        body, buf = buf, b""
    sock._rest = buf
    return status, headers, body


def recv_all(sock, timeout=5.0):
    """Everything until the peer closes (or timeout). Returns (bytes, closed: bool)."""
    sock.settimeout(timeout)
    data = getattr(sock, "_rest", b"")
    sock._rest = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False
    except ConnectionResetError:
        return data, True


class Tap:
    """TAP lines for tests/run.sh: ok(name) / fail(name, why) / check(cond, name, why)."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def check(self, cond, name, why=""):
        self.n += 1
        if cond:
            print("ok %d - %s" % (self.n, name), flush=True)
        else:
            self.failed += 1
            print("not ok %d - %s" % (self.n, name), flush=True)
            for line in str(why).splitlines() or [""]:
                print("# " + line, flush=True)
        return cond

    def run(self, name, fn, *args):
        """Run fn(*args) as one test: passes unless it raises (AssertionError: the message)."""
        try:
            fn(*args)
            return self.check(True, name)
        except Exception as e:  # noqa: BLE001 - every failure becomes a TAP line
            return self.check(False, name, "%s: %s" % (type(e).__name__, e))

    def skip(self, name, why):
        self.n += 1
        print("ok %d - %s # SKIP %s" % (self.n, name, why), flush=True)

    def done(self):
        print("1..%d" % self.n, flush=True)
        return 1 if self.failed else 0
