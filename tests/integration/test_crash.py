"""test_crash.py - RELIABILITY.md D3: the adapter store survives SIGKILL at any moment,
with 4 tenants writing and inference running.

Before the first cycle, with no daemon running, `adapterd tenant add` makes tenants t0..t3
and `adapterd key add` one tenant-role key for each plus an admin key (of "default"), so
every request carries `Authorization: Bearer KEY`. Then CRASH_CYCLES (default 50) cycles
on one persistent data dir. Each cycle starts the daemon and checks what the previous
cycle left: tmp/ empty, the blobs dir is exactly the set of blobs live rows of all tenants
reference (no orphan, none missing), per tenant with its own key GET lists exactly that
tenant's live rows of the index (no row of another tenant), its aliases as indexed, a
request without a key gets 401, and adapters serve (every live version of every tenant
every 10th cycle, one per tenant otherwise). Then one writer thread per tenant (uploads of
small random adapters under the same 6 names in every tenant, some streamed slowly;
deletes of NAME or NAME@V; alias PUTs and DELETEs) and 1-2 inference threads (short
greedy completions with a tenant's key on its adapters, aliases or the base model; an
answered 500 is a violation) run until a SIGKILL at a uniform 0-2 s. With the process dead
the index is opened read-only (python's sqlite3) and checked: integrity_check, foreign
keys, every live row's blobs present and hashing to their names, no alias pointing at
another tenant's row, every upload answered 201 present (unless a delete of the same
tenant that may have removed it was acknowledged or in flight), every acknowledged delete
stuck, rows never vanish or change, aliases as last acknowledged. Prints counts and
violations as '#' lines; exits non-zero on any violation. Run with /usr/bin/python3.
CRASH_SEED repeats a run's random choices (thread timing still varies); KEEP_TMP keeps
the data dir and daemon logs.
"""

import hashlib
import http.client
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import daemon  # noqa: E402

sys.path.insert(0, os.path.join(daemon.ROOT, "tools"))
import hf_fixtures  # noqa: E402

MODEL = "tiny"
CYCLES = int(os.environ.get("CRASH_CYCLES", "50"))
FULL_EVERY = 10
KILL_MAX_S = 2.0
TENANTS = ["t0", "t1", "t2", "t3"]
NAMES = ["ad%d" % i for i in range(6)]      # the same names in every tenant
ALIASES = ["al0", "al1", "al2"]
N_VARIANTS = 16
WORK = os.path.join(daemon.TMP, "crash-%d" % os.getpid())
DATA = os.path.join(WORK, "data")
PROMPT = "Once upon a time"


# ---- fixtures ------------------------------------------------------------------------------

def make_variants(rng, cfg):
    """N_VARIANTS random valid adapters: (config bytes, weights bytes, sha256)."""
    out = []
    for i in range(N_VARIANTS):
        folder = os.path.join(WORK, "fx", str(i))
        r = rng.choice([2, 3, 4])
        targets = rng.sample(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"],
                             rng.randint(1, 3))
        hf_fixtures.make_lora(folder, cfg, seed=1000 + i, r=r, alpha=float(2 * r),
                              targets=targets, layers=rng.choice([None, [0], [1]]))
        with open(os.path.join(folder, "adapter_config.json"), "rb") as f:
            config = f.read()
        with open(os.path.join(folder, "adapter_model.safetensors"), "rb") as f:
            weights = f.read()
        out.append((config, weights, hashlib.sha256(weights).hexdigest()))
    return out


def multipart(config, weights, boundary="----crash-b0undary"):
    b = boundary.encode()
    body = (b"--" + b + b'\r\nContent-Disposition: form-data; name="config"\r\n\r\n' + config +
            b"\r\n--" + b + b'\r\nContent-Disposition: form-data; name="weights"\r\n\r\n' +
            weights + b"\r\n--" + b + b"--\r\n")
    return body, "multipart/form-data; boundary=" + boundary


def cli(*args):
    """adapterd ARGS --data-dir DATA with no ADAPTERD_* environment -> stdout; raises on a
    non-zero exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERD_")}
    p = subprocess.run([daemon.binary()] + list(args) + ["--data-dir", DATA],
                       capture_output=True, text=True, timeout=60, env=env)
    if p.returncode != 0:
        raise daemon.DaemonError("adapterd %s: exit %d: %s" % (" ".join(args), p.returncode,
                                                               p.stderr.strip()))
    return p.stdout


def make_tenants():
    """The tenants and keys, offline (no daemon holds DATA yet). -> ({tenant: key}, admin key)."""
    keys = {}
    for t in TENANTS:
        cli("tenant", "add", t)
        keys[t] = cli("key", "add", "--tenant", t, "--role", "tenant", "--label",
                      "crash-" + t).strip()
    admin = cli("key", "add", "--tenant", "default", "--role", "admin", "--label",
                "crash-admin").strip()
    for k in list(keys.values()) + [admin]:
        if not k.startswith("adk_") or "\n" in k:
            raise daemon.DaemonError("key add printed %r, not one secret" % k)
    return keys, admin


# ---- the operations ------------------------------------------------------------------------

class Op:
    """One request of one tenant and what came of it: status None = no answer (the daemon
    died)."""

    def __init__(self, tenant, kind, name, version=None, target=None, sha=None):
        self.tenant, self.kind, self.name = tenant, kind, name
        self.version, self.target, self.sha = version, target, sha
        self.t_send = self.t_end = None
        self.status = None
        self.body = None

    def effective(self):
        """It changed the index (200/201) or may have (no answer)."""
        return self.status in (200, 201, None)

    def spec(self):
        return self.name if self.version is None else "%s@%d" % (self.name, self.version)


def send(d, key, op, method, path, body=None, ctype=None, slow=False, timeout=10):
    conn = http.client.HTTPConnection(d.host, d.port, timeout=timeout)
    op.t_send = time.monotonic()
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.putheader("Authorization", "Bearer " + key)
        if body is not None:
            conn.putheader("Content-Type", ctype)
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body is not None:
            step = 1024 if slow else len(body)
            for i in range(0, len(body), step):
                conn.send(body[i:i + step])
                if slow:
                    time.sleep(0.004)
        r = conn.getresponse()
        data = r.read()
        op.status = r.status
        try:
            op.body = json.loads(data)
        except ValueError:
            op.body = data
    except (OSError, http.client.HTTPException):
        op.status = None  # the kill: outcome unknown
    finally:
        op.t_end = time.monotonic()
        conn.close()


class World:
    """Everything every cycle did, and what the index looked like. Adapter and alias names
    repeat in every tenant, so every key below starts with the tenant."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.keys = {}              # tenant -> API key
        self.admin = None
        self.ops = []               # every Op of every cycle
        self.alias_ops = {}         # (tenant, alias) -> its effective Ops
        self.known = {}             # (tenant, name) -> set of versions answered 201
        self.rows = {}              # (tenant, name, version) -> (sha256, state) at the last check
        self.required = {}          # (tenant, name, version) -> upload Op that must still be live
        self.violations = []
        self.cmpl = {}              # completions during the cycles: status -> count
        self.lost = set()           # acknowledged uploads found missing (or not ready)
        self.n_integrity = 0        # integrity_check answers other than ok
        self.n_foreign = 0          # rows or aliases a tenant saw that are not its own

    def violate(self, cycle, msg):
        with self.lock:
            self.violations.append("cycle %d: %s" % (cycle, msg))
        print("# VIOLATION cycle %d: %s" % (cycle, msg), flush=True)


def versions_of(w, tenant, name):
    with w.lock:
        return sorted(w.known.get((tenant, name), ()))


def writer(d, w, tenant, variants, stop, seed):
    """One tenant's changes until stop or the kill."""
    rng = random.Random(seed)
    key = w.keys[tenant]
    while not stop.is_set():
        x = rng.random()
        name = rng.choice(NAMES)
        if x < 0.45:
            config, weights, sha = rng.choice(variants)
            op = Op(tenant, "upload", name, sha=sha)
            body, ctype = multipart(config, weights)
            send(d, key, op, "POST", "/v1/adapters?name=" + name, body, ctype,
                 slow=rng.random() < 0.2)
            if op.status == 201:
                op.version = op.body["version"]
        elif x < 0.7:
            versions = versions_of(w, tenant, name)
            version = rng.choice(versions) if versions and rng.random() < 0.6 else None
            op = Op(tenant, "delete", name, version=version)
            send(d, key, op, "DELETE", "/v1/adapters/" + op.spec())
        elif x < 0.9:
            alias = rng.choice(ALIASES)
            versions = versions_of(w, tenant, name)
            target = "%s@%d" % (name, rng.choice(versions)) if versions and rng.random() < 0.5 \
                else name
            op = Op(tenant, "alias_put", alias, target=target)
            send(d, key, op, "PUT", "/v1/aliases/" + alias,
                 json.dumps({"adapter": target}).encode(), "application/json")
        else:
            op = Op(tenant, "alias_delete", rng.choice(ALIASES))
            send(d, key, op, "DELETE", "/v1/aliases/" + op.name)
        with w.lock:
            w.ops.append(op)
            if op.kind in ("alias_put", "alias_delete") and op.effective():
                w.alias_ops.setdefault((tenant, op.name), []).append(op)
            if op.kind == "upload" and op.status == 201:
                w.known.setdefault((tenant, name), set()).add(op.version)
            elif op.kind == "delete" and op.status == 200:
                if op.version is None:
                    w.known.pop((tenant, name), None)
                else:
                    w.known.get((tenant, name), set()).discard(op.version)
        if op.status is None:
            return  # the daemon is gone


def inference(d, w, cycle, stop, seed):
    """Short greedy completions of random tenants on their adapters (NAME@V, NAME), aliases or
    the base model until stop or the kill. 200, 404 (deleted meanwhile) and no answer are
    expected; every status is counted, an answered 500 is a violation."""
    rng = random.Random(seed)
    while not stop.is_set():
        tenant = rng.choice(TENANTS)
        x = rng.random()
        name = rng.choice(NAMES)
        versions = versions_of(w, tenant, name)
        if x < 0.15 or (x < 0.75 and not versions):
            model = MODEL
        elif x < 0.5:
            model = "%s@%d" % (name, rng.choice(versions))
        elif x < 0.75:
            model = name
        else:
            model = rng.choice(ALIASES)
        op = Op(tenant, "completion", model)
        body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": rng.randint(2, 4),
                           "temperature": 0}).encode()
        send(d, w.keys[tenant], op, "POST", "/v1/completions", body, "application/json",
             timeout=20)
        with w.lock:
            w.cmpl[str(op.status)] = w.cmpl.get(str(op.status), 0) + 1
        if op.status == 500:
            w.violate(cycle, "completion of %s on %s answered 500: %r"
                      % (tenant, model, op.body if isinstance(op.body, dict) else op.body[:200]))
        if op.status is None:
            return


# ---- checks after the kill (the process is dead) ----------------------------------------

def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def read_index(w, cycle):
    """-> (rows {(tenant, name, v): (sha, config_sha, state)}, aliases {(tenant, alias):
    ("NAME@V", state)}), after integrity_check and foreign_key_check."""
    path = os.path.join(DATA, "adapterd.db")
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        ic = db.execute("PRAGMA integrity_check").fetchall()
        if ic != [("ok",)]:
            w.n_integrity += 1
            w.violate(cycle, "integrity_check: %r" % ic[:10])
        fk = db.execute("PRAGMA foreign_key_check").fetchall()
        if fk:
            w.violate(cycle, "foreign_key_check: %r" % fk[:10])
        tenants = sorted(r[0] for r in db.execute("SELECT name FROM tenants"))
        if tenants != sorted(["default"] + TENANTS):
            w.violate(cycle, "tenants table holds %r" % tenants)
        rows = {}
        for tenant, name, version, sha, csha, state in db.execute(
                "SELECT t.name, a.name, a.version, a.sha256, a.config_sha256, a.state "
                "FROM adapters a LEFT JOIN tenants t ON t.id = a.tenant_id"):
            if tenant not in TENANTS:
                w.violate(cycle, "row %s@%d belongs to tenant %r" % (name, version, tenant))
            rows[(tenant, name, version)] = (sha, csha, state)
        aliases = {}
        for tenant, alias, owner, name, version, state in db.execute(
                "SELECT t.name, l.name, o.name, a.name, a.version, a.state FROM aliases l "
                "JOIN adapters a ON a.id = l.adapter_id LEFT JOIN tenants t ON "
                "t.id = l.tenant_id LEFT JOIN tenants o ON o.id = a.tenant_id"):
            if owner != tenant:
                w.n_foreign += 1
                w.violate(cycle, "alias %s of %s points at %s@%d of %s"
                          % (alias, tenant, name, version, owner))
            aliases[(tenant, alias)] = ("%s@%d" % (name, version), state)
    finally:
        db.close()
    return rows, aliases


def check_index(w, cycle, new_ops):
    """The index and blobs after the kill. -> (rows, aliases) as read_index."""
    rows, aliases = read_index(w, cycle)
    blobs = os.path.join(DATA, "blobs")
    hashed = {}
    for (tenant, name, version), (sha, csha, state) in sorted(rows.items()):
        if state == "deleted":
            continue
        if state != "ready":
            w.violate(cycle, "%s %s@%d is %s" % (tenant, name, version, state))
        for h in (sha, csha):
            p = os.path.join(blobs, h)
            if h not in hashed:
                hashed[h] = sha_file(p) if os.path.exists(p) else None
            if hashed[h] is None:
                w.violate(cycle, "%s %s@%d: blob %s missing" % (tenant, name, version, h))
            elif hashed[h] != h:
                w.violate(cycle, "%s %s@%d: blob %s hashes to %s"
                          % (tenant, name, version, h, hashed[h]))
    for (tenant, alias), (target, state) in aliases.items():
        if state == "deleted":
            w.violate(cycle, "alias %s of %s points at deleted %s" % (alias, tenant, target))
    # Rows never vanish, change content or come back from deleted.
    for key, (sha, state) in w.rows.items():
        now = rows.get(key)
        if now is None:
            w.violate(cycle, "row %s %s@%d vanished" % key)
        elif now[0] != sha:
            w.violate(cycle, "row %s %s@%d changed sha %s -> %s" % (key + (sha, now[0])))
        elif state == "deleted" and now[2] != "deleted":
            w.violate(cycle, "row %s %s@%d came back as %s" % (key + (now[2],)))
    w.rows = {k: (v[0], v[2]) for k, v in rows.items()}
    check_acknowledged(w, cycle, rows, new_ops)
    check_aliases(w, cycle, aliases)
    return rows, aliases


def check_acknowledged(w, cycle, rows, new_ops):
    """new_ops: this cycle's. Uploads of earlier cycles stay in w.required until a delete of
    the same tenant and name that may have removed them (one whose commit may have come
    after the upload's: it ended after the upload was sent, answered 200 or killed in
    flight); rows never changing is checked separately, so each acknowledgement's own
    content is checked once."""
    for op in new_ops:
        if op.kind == "upload" and op.status == 201:
            key = (op.tenant, op.name, op.version)
            w.required[key] = op
            row = rows.get(key)
            if row is not None and row[0] != op.sha:
                w.violate(cycle, "upload %s %s@%d: row sha %s, uploaded %s"
                          % (key + (row[0], op.sha)))
    for d in new_ops:
        if d.kind == "delete" and d.effective():
            for key, up in list(w.required.items()):
                if (up.tenant == d.tenant and up.name == d.name and
                        d.version in (None, up.version) and d.t_end > up.t_send):
                    del w.required[key]
    for key, up in sorted(w.required.items()):
        row = rows.get(key)
        if row is None:
            w.lost.add(key)
            w.violate(cycle, "upload %s %s@%d answered 201 but has no row" % key)
        elif row[2] != "ready":
            w.lost.add(key)
            w.violate(cycle, "upload %s %s@%d answered 201 is %s with no delete that could "
                             "have removed it" % (key + (row[2],)))
    for op in new_ops:
        if op.kind == "delete" and op.status == 200:
            last = int(op.body["id"].rsplit("@", 1)[1])
            if op.version is not None and last != op.version:
                w.violate(cycle, "delete %s %s answered id %s" % (op.tenant, op.spec(),
                                                                 op.body["id"]))
            for (tenant, name, version), row in rows.items():
                covered = version == op.version if op.version is not None else version <= last
                if tenant == op.tenant and name == op.name and covered and row[2] != "deleted":
                    w.violate(cycle, "delete of %s %s (answered 200) but %s@%d is %s"
                              % (op.tenant, op.spec(), name, version, row[2]))


def check_aliases(w, cycle, aliases):
    """Where the last change to a tenant's alias was acknowledged and nothing else that may
    have changed it overlapped, the index must show that change."""
    for (tenant, alias), ops in w.alias_ops.items():
        last = max(ops, key=lambda op: op.t_send)
        if last.status is None or any(op is not last and op.t_end > last.t_send for op in ops):
            continue
        have = aliases.get((tenant, alias), (None,))[0]
        want = last.body["adapter"] if last.kind == "alias_put" else None
        if have != want:
            w.violate(cycle, "alias %s of %s is %r, last acknowledged change made it %r"
                      % (alias, tenant, have, want))


# ---- checks after the restart ------------------------------------------------------------

def call(d, key, method, path, body=None, extra=None, timeout=20.0):
    """-> (status, parsed JSON or bytes)."""
    headers = dict(extra or {})
    if key is not None:
        headers["Authorization"] = "Bearer " + key
    st, _, data = d.request(method, path, body, headers=headers, timeout=timeout)
    try:
        return st, json.loads(data)
    except ValueError:
        return st, data


def check_tenant_get(d, w, cycle, tenant, rows, aliases):
    """Tenant's GETs with its own key show exactly its live rows and aliases of the index."""
    key = w.keys[tenant]
    live = sorted((n, v) for (t, n, v), r in rows.items() if t == tenant and r[2] != "deleted")
    served = []
    for name in NAMES:
        st, body = call(d, key, "GET", "/v1/adapters/" + name)
        if st == 404:
            continue
        if st != 200:
            w.violate(cycle, "%s GET /v1/adapters/%s: %d %r" % (tenant, name, st, body))
            continue
        for a in body["data"]:
            served.append((a["name"], a["version"]))
            own = rows.get((tenant, a["name"], a["version"]))
            got = (a["sha256"], a["config_sha256"])
            if own is None or own[:2] != got or a.get("shared"):
                others = [t for t in TENANTS if t != tenant and
                          rows.get((t, a["name"], a["version"]), (None,))[:2] == got]
                if others or a.get("shared"):
                    w.n_foreign += 1
                w.violate(cycle, "%s GET shows %s (sha %s, shared %r) that is not its own row"
                          " %r; matches rows of %r" % (tenant, a["id"], got[0], a.get("shared"),
                                                        own, others))
    if sorted(served) != live:
        w.violate(cycle, "%s GET lists %r, the index has %r live" % (tenant, sorted(served), live))
    newest = {}
    for n, v in live:
        newest[n] = max(v, newest.get(n, 0))
    st, body = call(d, key, "GET", "/v1/adapters")
    listed = sorted((a["name"], a["version"]) for a in body["data"]) if st == 200 else None
    if listed != sorted(newest.items()):
        w.violate(cycle, "%s GET /v1/adapters: %d %r, the index's newest live %r"
                  % (tenant, st, listed, sorted(newest.items())))
    st, body = call(d, key, "GET", "/v1/aliases")
    have = {a["name"]: a["adapter"] for a in body["data"]} if st == 200 else None
    want = {al: tgt for (t, al), (tgt, _) in aliases.items() if t == tenant}
    if have != want:
        w.violate(cycle, "%s GET /v1/aliases: %d %r, the index has %r" % (tenant, st, have, want))


def check_blobs(w, cycle, rows):
    """tmp/ empty; blobs/ is exactly the blobs live rows (of every tenant) reference."""
    left = os.listdir(os.path.join(DATA, "tmp"))
    if left:
        w.violate(cycle, "tmp/ not empty after the restart: %r" % left[:5])
    refs = {h for r in rows.values() if r[2] != "deleted" for h in r[:2]}
    files = set(os.listdir(os.path.join(DATA, "blobs")))
    if files - refs:
        w.violate(cycle, "unreferenced blobs after the restart: %r" % sorted(files - refs)[:3])
    if refs - files:
        w.violate(cycle, "referenced blobs missing after the restart: %r"
                  % sorted(refs - files)[:3])


def check_served(d, w, cycle, rows, aliases, full, fresh):
    """After the restart: blobs and tmp/, keys still required, each tenant's view, admin
    view, and completions (every live row and alias when full, else one fresh (or any) row
    per tenant). fresh: keys of the uploads acknowledged last cycle. -> completions made."""
    check_blobs(w, cycle, rows)
    st, _ = call(d, None, "GET", "/v1/adapters")
    if st != 401:
        w.violate(cycle, "GET /v1/adapters without a key: %d, want 401 (keys lost?)" % st)
    st, body = call(d, w.admin, "GET", "/v1/admin/tenants")
    names = sorted(t["name"] for t in body["data"]) if st == 200 else None
    if names != sorted(["default"] + TENANTS):
        w.violate(cycle, "admin GET /v1/admin/tenants: %d %r" % (st, names))
    for tenant in TENANTS:
        check_tenant_get(d, w, cycle, tenant, rows, aliases)
    targets = [(TENANTS[cycle % len(TENANTS)], MODEL)]
    for tenant in TENANTS:
        live = sorted("%s@%d" % (n, v) for (t, n, v), r in rows.items()
                      if t == tenant and r[2] != "deleted")
        if full:
            targets += [(tenant, s) for s in live]
            targets += [(tenant, al) for (t, al) in sorted(aliases) if t == tenant]
        else:
            pool = sorted("%s@%d" % (n, v) for (t, n, v) in fresh
                          if t == tenant and "%s@%d" % (n, v) in live) or live
            targets += [(tenant, s) for s in w.rng.sample(pool, min(1, len(pool)))]
    for tenant, spec in targets:
        st, body = call(d, w.keys[tenant], "POST", "/v1/completions",
                        {"model": spec, "prompt": PROMPT, "max_tokens": 2, "temperature": 0})
        if st != 200:
            w.violate(cycle, "completion of %s on %s after the restart: %d %r"
                      % (tenant, spec, st, body))
    return len(targets) - 1


# ---- main ----------------------------------------------------------------------------------

def start():
    return daemon.Daemon(["--model-name", MODEL, "--log-level", "warn",
                          "--blob-gc-interval-ms", "0"], data_dir=DATA)


def run_cycle(w, cycle, variants, rows, aliases, fresh):
    d = start()
    served = check_served(d, w, cycle, rows, aliases, cycle % FULL_EVERY == 0, fresh)
    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(d, w, t, variants, stop, w.rng.random()))
               for t in TENANTS]
    threads += [threading.Thread(target=inference, args=(d, w, cycle, stop, w.rng.random()))
                for _ in range(w.rng.randint(1, 2))]
    n_before = len(w.ops)
    for t in threads:
        t.start()
    time.sleep(w.rng.uniform(0, KILL_MAX_S))
    d.proc.kill()
    d.proc.wait()
    stop.set()
    for t in threads:
        t.join(30)
    new_ops = w.ops[n_before:]
    rows, aliases = check_index(w, cycle, new_ops)
    fresh = [(op.tenant, op.name, op.version) for op in new_ops
             if op.kind == "upload" and op.status == 201]
    if not w.violations and not os.environ.get("KEEP_TMP"):
        shutil.rmtree(d.work, ignore_errors=True)
    return rows, aliases, fresh, len(new_ops), served


def summary(w, cycle, rows, n_ops, n_served, n_full, t0):
    ups = [op for op in w.ops if op.kind == "upload"]
    dels = [op for op in w.ops if op.kind == "delete"]
    status = {}
    for op in w.ops:
        status.setdefault(op.kind, {}).setdefault(str(op.status), 0)
        status[op.kind][str(op.status)] += 1
    per_tenant = {t: [0, 0] for t in TENANTS}
    for op in w.ops:
        if op.kind == "upload" and op.status == 201:
            per_tenant[op.tenant][0] += 1
        elif op.kind == "delete" and op.status == 200:
            per_tenant[op.tenant][1] += 1
    live = sum(1 for r in rows.values() if r[2] != "deleted")
    cmpl_5xx = sum(n for s, n in w.cmpl.items() if s.startswith("5"))
    print("# tenants %d (%s), one writer each, kill at uniform 0-%.1f s"
          % (len(TENANTS), " ".join(TENANTS), KILL_MAX_S))
    print("# cycles %d, operations %d, uploads answered 201: %d of %d, deletes answered 200: "
          "%d of %d" % (cycle + 1, n_ops, sum(op.status == 201 for op in ups), len(ups),
                        sum(op.status == 200 for op in dels), len(dels)))
    print("# per tenant (uploads 201, deletes 200): %s"
          % ", ".join("%s %d/%d" % (t, u, dl) for t, (u, dl) in sorted(per_tenant.items())))
    print("# outcomes by kind (None = killed in flight): %s" % json.dumps(status, sort_keys=True))
    print("# completions during cycles by status (None = killed in flight): %s; answered 5xx %d"
          % (json.dumps(w.cmpl, sort_keys=True), cmpl_5xx))
    print("# index rows %d (%d live), completions checked after restarts %d (%d full checks)"
          % (len(rows), live, n_served, n_full + 1))
    print("# acknowledged uploads lost %d" % len(w.lost))
    print("# integrity failures %d" % w.n_integrity)
    print("# rows or aliases seen across tenants %d" % w.n_foreign)
    print("# violations %d" % len(w.violations))
    print("# wall %.1f s" % (time.time() - t0))
    return ups, per_tenant


def main():
    tap = daemon.Tap()
    t0 = time.time()
    seed = int(os.environ.get("CRASH_SEED", str(int(time.time()))))
    print("# seed %d (CRASH_SEED to repeat), cycles %d (CRASH_CYCLES)" % (seed, CYCLES))
    if not os.path.exists(daemon.binary()):
        tap.check(False, "adapterd is built", "%s is missing (run make)" % daemon.binary())
        return tap.done()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(DATA)
    w = World(seed)
    with open(os.path.join(daemon.tiny_model(), "config.json")) as f:
        cfg = json.load(f)
    variants = make_variants(w.rng, cfg)
    rows, aliases, fresh, n_ops, n_served, n_full = {}, {}, [], 0, 0, 0
    cycle = 0
    try:
        w.keys, w.admin = make_tenants()
        for cycle in range(CYCLES):
            rows, aliases, fresh, n, served = run_cycle(w, cycle, variants, rows, aliases, fresh)
            n_ops += n
            n_served += served
            n_full += cycle % FULL_EVERY == 0 and cycle > 0
            if len(w.violations) > 20:
                break
        # A last start: the final state serves in full.
        d = start()
        try:
            n_served += check_served(d, w, CYCLES, rows, aliases, True, fresh)
        finally:
            rc = d.stop()
        if rc != 0:
            w.violate(CYCLES, "final daemon exit %r" % rc)
    except daemon.DaemonError as e:
        w.violate(cycle, "daemon or CLI failed: %s" % e)

    ups, per_tenant = summary(w, cycle, rows, n_ops, n_served, n_full, t0)
    tap.check(cycle + 1 >= CYCLES, "%d kill cycles ran" % CYCLES, "stopped at %d" % (cycle + 1))
    tap.check(all(u >= CYCLES // 2 and dl >= 1 for u, dl in per_tenant.values()),
              "%d tenants were written to (uploads and deletes acknowledged in each)"
              % len(TENANTS), per_tenant)
    tap.check(sum(op.status == 201 for op in ups) >= CYCLES,
              "uploads were acknowledged between kills", "too few to test anything")
    tap.check(sum(op.status is None for op in w.ops) >= CYCLES // 2,
              "kills landed while requests were in flight")
    tap.check(w.cmpl.get("200", 0) >= CYCLES, "completions ran during the cycles", w.cmpl)
    tap.check(w.cmpl.get("500", 0) == 0, "no completion during the cycles answered 500", w.cmpl)
    tap.check(not w.lost, "acknowledged uploads lost = 0", sorted(w.lost)[:10])
    tap.check(w.n_integrity == 0, "integrity failures = 0")
    tap.check(w.n_foreign == 0, "no tenant saw another tenant's rows or aliases")
    tap.check(not w.violations, "no crash-safety violation", "\n".join(w.violations[:30]))
    rc = tap.done()
    if rc == 0 and not os.environ.get("KEEP_TMP"):
        shutil.rmtree(WORK, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
