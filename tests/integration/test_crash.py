"""test_crash.py - the adapter store survives SIGKILL at any moment.

At least 50 cycles on one persistent data dir. Each cycle starts the daemon, checks what the
previous cycle left (tmp/ empty after the start, blob GC, GET agrees with the index, the
adapters serve: every live version every 10th cycle, one otherwise), then runs random
changes from three threads (uploads of small random adapters under a pool of 6 names, some
streamed slowly; deletes of NAME or NAME@V; alias PUTs and DELETEs) and SIGKILLs the daemon
0-1.5 s in. With the process dead the index is opened read-only (python's sqlite3) and
checked: integrity_check, foreign keys, every non-deleted row's blobs present and hashing to
their names, no row broken, every upload answered 201 present (unless a delete that may have
removed it was acknowledged or in flight), every acknowledged delete stuck, rows never
vanish or change, aliases as last acknowledged. Prints counts and violations as '#' lines;
exits non-zero on any violation. Run with /usr/bin/python3.
"""

import hashlib
import http.client
import json
import os
import random
import shutil
import sqlite3
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
KILL_MAX_S = 1.5
N_WORKERS = 3
NAMES = ["ad%d" % i for i in range(6)]
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


# ---- the operations ------------------------------------------------------------------------

class Op:
    """One request and what came of it: status None = no answer (the daemon died)."""

    def __init__(self, kind, name, version=None, target=None, sha=None):
        self.kind, self.name, self.version, self.target, self.sha = kind, name, version, target, sha
        self.t_send = self.t_end = None
        self.status = None
        self.body = None

    def effective(self):
        """It changed the index (200/201) or may have (no answer)."""
        return self.status in (200, 201, None)


def send(d, op, method, path, body=None, ctype=None, slow=False):
    conn = http.client.HTTPConnection(d.host, d.port, timeout=10)
    op.t_send = time.monotonic()
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
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
    """Everything every cycle did, and what the index looked like."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.ops = []               # every Op of every cycle
        self.known = {}             # name -> set of versions answered 201
        self.rows = {}              # (name, version) -> (sha256, state) at the last check
        self.required = {}          # (name, version) -> upload Op that must still be live
        self.violations = []
        self.n_acked_uploads = 0
        self.n_acked_deletes = 0

    def violate(self, cycle, msg):
        self.violations.append("cycle %d: %s" % (cycle, msg))
        print("# VIOLATION cycle %d: %s" % (cycle, msg), flush=True)


def worker(d, w, variants, stop, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        x = rng.random()
        name = rng.choice(NAMES)
        if x < 0.45:
            config, weights, sha = rng.choice(variants)
            op = Op("upload", name, sha=sha)
            body, ctype = multipart(config, weights)
            send(d, op, "POST", "/v1/adapters?name=" + name, body, ctype, slow=rng.random() < 0.2)
            if op.status == 201:
                op.version = op.body["version"]
        elif x < 0.7:
            with w.lock:
                versions = sorted(w.known.get(name, ()))
            version = rng.choice(versions) if versions and rng.random() < 0.6 else None
            op = Op("delete", name, version=version)
            spec = name if version is None else "%s@%d" % (name, version)
            send(d, op, "DELETE", "/v1/adapters/" + spec)
        elif x < 0.9:
            alias = rng.choice(ALIASES)
            with w.lock:
                versions = sorted(w.known.get(name, ()))
            target = "%s@%d" % (name, rng.choice(versions)) if versions and rng.random() < 0.5 \
                else name
            op = Op("alias_put", alias, target=target)
            send(d, op, "PUT", "/v1/aliases/" + alias, json.dumps({"adapter": target}).encode(),
                 "application/json")
        else:
            op = Op("alias_delete", rng.choice(ALIASES))
            send(d, op, "DELETE", "/v1/aliases/" + op.name)
        with w.lock:
            w.ops.append(op)
            if op.kind == "upload" and op.status == 201:
                w.known.setdefault(name, set()).add(op.version)
            elif op.kind == "delete" and op.status == 200:
                if op.version is None:
                    w.known.pop(name, None)
                else:
                    w.known.get(name, set()).discard(op.version)
        if op.status is None:
            return  # the daemon is gone


# ---- checks --------------------------------------------------------------------------------

def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def check_index(w, cycle, new_ops):
    """The index and blobs after the kill (the process is dead). -> rows {(name, v): row}."""
    path = os.path.join(DATA, "adapterd.db")
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        ic = db.execute("PRAGMA integrity_check").fetchall()
        if ic != [("ok",)]:
            w.violate(cycle, "integrity_check: %r" % ic)
        fk = db.execute("PRAGMA foreign_key_check").fetchall()
        if fk:
            w.violate(cycle, "foreign_key_check: %r" % fk)
        rows = {}
        for name, version, sha, csha, state in db.execute(
                "SELECT name, version, sha256, config_sha256, state FROM adapters"):
            rows[(name, version)] = (sha, csha, state)
        aliases = {}
        for alias, name, version, state in db.execute(
                "SELECT l.name, a.name, a.version, a.state FROM aliases l "
                "JOIN adapters a ON a.id = l.adapter_id"):
            aliases[alias] = ("%s@%d" % (name, version), state)
    finally:
        db.close()
    blobs = os.path.join(DATA, "blobs")
    hashed = {}
    for (name, version), (sha, csha, state) in sorted(rows.items()):
        if state == "deleted":
            continue
        if state != "ready":
            w.violate(cycle, "%s@%d is %s" % (name, version, state))
        for h in (sha, csha):
            p = os.path.join(blobs, h)
            if h not in hashed:
                hashed[h] = sha_file(p) if os.path.exists(p) else None
            if hashed[h] is None:
                w.violate(cycle, "%s@%d: blob %s missing" % (name, version, h))
            elif hashed[h] != h:
                w.violate(cycle, "%s@%d: blob %s hashes to %s" % (name, version, h, hashed[h]))
    for alias, (target, state) in aliases.items():
        if state == "deleted":
            w.violate(cycle, "alias %s points at deleted %s" % (alias, target))
    # Rows never vanish, change content or come back from deleted.
    for key, (sha, state) in w.rows.items():
        now = rows.get(key)
        if now is None:
            w.violate(cycle, "row %s@%d vanished" % key)
        elif now[0] != sha:
            w.violate(cycle, "row %s@%d changed sha %s -> %s" % (key + (sha, now[0])))
        elif state == "deleted" and now[2] != "deleted":
            w.violate(cycle, "row %s@%d came back as %s" % (key + (now[2],)))
    w.rows = {k: (v[0], v[2]) for k, v in rows.items()}
    check_acknowledged(w, cycle, rows, new_ops)
    check_aliases(w, cycle, aliases)
    return rows


def check_acknowledged(w, cycle, rows, new_ops):
    """new_ops: this cycle's. Uploads of earlier cycles stay in w.required until a delete
    that may have removed them (one whose commit may have come after the upload's: it ended
    after the upload was sent, answered 200 or killed in flight); rows never changing is
    checked separately, so each acknowledgement's own content is checked once."""
    for op in new_ops:
        if op.kind == "upload" and op.status == 201:
            key = (op.name, op.version)
            w.required[key] = op
            row = rows.get(key)
            if row is not None and row[0] != op.sha:
                w.violate(cycle, "upload %s@%d: row sha %s, uploaded %s" % (key + (row[0], op.sha)))
    for d in new_ops:
        if d.kind == "delete" and d.effective():
            for key, up in list(w.required.items()):
                if up.name == d.name and d.version in (None, up.version) and d.t_end > up.t_send:
                    del w.required[key]
    for key, up in sorted(w.required.items()):
        row = rows.get(key)
        if row is None:
            w.violate(cycle, "upload %s@%d answered 201 but has no row" % key)
        elif row[2] != "ready":
            w.violate(cycle, "upload %s@%d answered 201 is %s with no delete that could "
                             "have removed it" % (key + (row[2],)))
    for op in new_ops:
        if op.kind == "delete" and op.status == 200:
            last = int(op.body["id"].rsplit("@", 1)[1])
            if op.version is not None and last != op.version:
                w.violate(cycle, "delete %s@%d answered id %s" % (op.name, op.version,
                                                                 op.body["id"]))
            for (name, version), row in rows.items():
                covered = version == op.version if op.version is not None else version <= last
                if name == op.name and covered and row[2] != "deleted":
                    w.violate(cycle, "delete of %s (answered 200) but %s@%d is %s"
                              % (op.name if op.version is None else "%s@%d" % (op.name, op.version),
                                 name, version, row[2]))


def check_aliases(w, cycle, aliases):
    """Where the last change to an alias was acknowledged and nothing else that may have
    changed it overlapped, the index must show that change."""
    for alias in ALIASES:
        ops = [op for op in w.ops if op.kind in ("alias_put", "alias_delete") and
               op.name == alias and op.effective()]
        if not ops:
            continue
        last = max(ops, key=lambda op: op.t_send)
        if last.status is None or any(op is not last and op.t_end > last.t_send for op in ops):
            continue
        have = aliases.get(alias, (None,))[0]
        want = last.body["adapter"] if last.kind == "alias_put" else None
        if have != want:
            w.violate(cycle, "alias %s is %r, last acknowledged change made it %r"
                      % (alias, have, want))


def complete(d, model):
    st, _, data = d.request("POST", "/v1/completions",
                            {"model": model, "prompt": PROMPT, "max_tokens": 2,
                             "temperature": 0}, timeout=20)
    return st, data


def check_served(d, w, cycle, rows, full):
    """After the restart: tmp/ empty, the daemon agrees with the index, blobs collected,
    adapters serve."""
    left = os.listdir(os.path.join(DATA, "tmp"))
    if left:
        w.violate(cycle, "tmp/ not empty after the restart: %r" % left[:5])
    live = sorted(k for k, r in rows.items() if r[2] != "deleted")
    served = []
    for name in NAMES:
        st, _, data = d.request("GET", "/v1/adapters/" + name)
        body = json.loads(data)
        if st == 200:
            served += [(a["name"], a["version"]) for a in body["data"]]
            for a in body["data"]:
                row = rows.get((a["name"], a["version"]))
                if row and (a["sha256"], a["config_sha256"]) != row[:2]:
                    w.violate(cycle, "GET %s differs from the index" % a["id"])
        elif st != 404:
            w.violate(cycle, "GET /v1/adapters/%s: %d %r" % (name, st, body))
    if sorted(served) != live:
        w.violate(cycle, "GET lists %r, the index has %r live" % (sorted(served), live))
    # Blob GC at open: every blob is referenced by a live row.
    refs = {h for k in live for h in rows[k][:2]}
    orphans = set(os.listdir(os.path.join(DATA, "blobs"))) - refs
    if orphans:
        w.violate(cycle, "unreferenced blobs after the restart: %r" % sorted(orphans)[:3])
    targets = live if full else w.rng.sample(live, min(1, len(live)))
    targets = ["%s@%d" % k for k in targets] + [MODEL]
    for spec in targets:
        st, data = complete(d, spec)
        if st != 200:
            w.violate(cycle, "completion on %s after the restart: %d %s" % (spec, st, data[:200]))
    return len(targets) - 1


# ---- main ----------------------------------------------------------------------------------

def run_cycle(w, cycle, variants, rows):
    d = daemon.Daemon(["--model-name", MODEL, "--log-level", "warn",
                       "--blob-gc-interval-ms", "0"], data_dir=DATA)
    served = check_served(d, w, cycle, rows, full=cycle % FULL_EVERY == 0) if cycle else 0
    stop = threading.Event()
    threads = [threading.Thread(target=worker, args=(d, w, variants, stop, w.rng.random()))
               for _ in range(N_WORKERS)]
    n_before = len(w.ops)
    for t in threads:
        t.start()
    time.sleep(w.rng.uniform(0, KILL_MAX_S))
    d.proc.kill()
    d.proc.wait()
    stop.set()
    for t in threads:
        t.join(30)
    rows = check_index(w, cycle, w.ops[n_before:])
    if not w.violations and not os.environ.get("KEEP_TMP"):
        shutil.rmtree(d.work, ignore_errors=True)
    return rows, len(w.ops) - n_before, served


def main():
    tap = daemon.Tap()
    t0 = time.time()
    seed = int(os.environ.get("CRASH_SEED", str(int(time.time()))))
    print("# seed %d (CRASH_SEED to repeat)" % seed)
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(DATA)
    w = World(seed)
    with open(os.path.join(daemon.tiny_model(), "config.json")) as f:
        cfg = json.load(f)
    variants = make_variants(w.rng, cfg)
    rows, n_ops, n_served, n_full = {}, 0, 0, 0
    cycle = 0
    try:
        for cycle in range(CYCLES):
            rows, n, served = run_cycle(w, cycle, variants, rows)
            n_ops += n
            n_served += served
            n_full += cycle % FULL_EVERY == 0 and cycle > 0
            if len(w.violations) > 20:
                break
        # A last start: the final state serves in full.
        d = daemon.Daemon(["--model-name", MODEL, "--log-level", "warn"], data_dir=DATA)
        try:
            n_served += check_served(d, w, CYCLES, rows, full=True)
        finally:
            rc = d.stop()
        if rc != 0:
            w.violate(CYCLES, "final daemon exit %r" % rc)
    except daemon.DaemonError as e:
        w.violate(cycle, "daemon did not start: %s" % e)

    ups = [op for op in w.ops if op.kind == "upload"]
    dels = [op for op in w.ops if op.kind == "delete"]
    status = {}
    for op in w.ops:
        status.setdefault(op.kind, {}).setdefault(str(op.status), 0)
        status[op.kind][str(op.status)] += 1
    live = sum(1 for r in rows.values() if r[2] != "deleted")
    print("# cycles %d, operations %d, uploads answered 201: %d of %d, deletes answered 200: "
          "%d of %d" % (cycle + 1, n_ops, sum(op.status == 201 for op in ups), len(ups),
                        sum(op.status == 200 for op in dels), len(dels)))
    print("# outcomes by kind (None = killed in flight): %s" % json.dumps(status, sort_keys=True))
    print("# index rows %d (%d live), completions checked after restarts %d (%d full checks)"
          % (len(rows), live, n_served, n_full + 1))
    print("# violations %d" % len(w.violations))
    tap.check(cycle + 1 >= CYCLES, "%d kill cycles ran" % CYCLES, "stopped at %d" % (cycle + 1))
    tap.check(sum(op.status == 201 for op in ups) >= CYCLES,
              "uploads were acknowledged between kills", "too few to test anything")
    tap.check(sum(op.status is None for op in w.ops) >= CYCLES // 2,
              "kills landed while requests were in flight", status)
    tap.check(not w.violations, "no crash-safety violation", "\n".join(w.violations[:30]))
    print("# wall %.1f s" % (time.time() - t0))
    rc = tap.done()
    if rc == 0 and not os.environ.get("KEEP_TMP"):
        shutil.rmtree(WORK, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
