"""test_cli.py - the offline tenant and API-key commands of adapterd (docs/OPERATIONS.md
"Tenants and keys").

`adapterd tenant add|set|list` and `adapterd key add|list|revoke` on a fresh DATA_DIR under
tests/tmp/: exit codes (0 ok, 1 unknown/existing/busy, 2 bad argument), the one-line
outputs, the tables, that `key add` prints exactly one secret line on stdout and that the
secret is nowhere under DATA_DIR, that a held DATA_DIR lock (a python flock, then a real
daemon) refuses the commands pointing at the admin API, and that the command-line-only
flags ignore the environment and config files. Prints TAP; exits non-zero on a failure.
Run with /usr/bin/python3 (numpy writes the daemon's tiny model).
"""

import fcntl
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import daemon  # noqa: E402

WORK = os.path.join(daemon.TMP, "cli-%d" % os.getpid())
DATA = os.path.join(WORK, "data")
SECRET_RE = re.compile(r"^adk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
ISO_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def run(*args, data=DATA, env=None):
    """adapterd ARGS --data-dir DATA -> CompletedProcess (text)."""
    cmd = [daemon.binary()] + list(args)
    if data is not None:
        cmd += ["--data-dir", data]
    e = dict(os.environ)
    for k in list(e):
        if k.startswith("ADAPTERD_"):
            del e[k]  # the caller's environment must not steer these tests
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=e)


def expect(p, status, what):
    assert p.returncode == status, "%s: exit %d, want %d\nstdout: %s\nstderr: %s" % (
        what, p.returncode, status, p.stdout, p.stderr)


def tenant_line(p):
    lines = p.stdout.splitlines()
    assert len(lines) == 1, "want one line, got %r" % p.stdout
    return dict(kv.split("=", 1) for kv in lines[0].split()[1:]), lines[0].split()[0]


def table(p):
    """A header line and rows -> list of dicts keyed by the header's words."""
    lines = p.stdout.splitlines()
    head = lines[0].split()
    return [dict(zip(head, line.split())) for line in lines[1:]]


# ---- tests ---------------------------------------------------------------------------------

def t_help():
    p = run("--help", data=None)
    expect(p, 0, "--help")
    for flag in ("--insecure-no-auth", "--tenant-max-concurrent", "--tenant-tokens-per-min",
                 "--tenant-max-stored-bytes", "--tenant NAME", "--role", "--label",
                 "--max-concurrent", "--tokens-per-min", "--max-stored-bytes", "--share"):
        assert flag in p.stdout, "%s missing from --help" % flag
    for env in ("ADAPTERD_INSECURE_NO_AUTH", "ADAPTERD_TENANT_MAX_CONCURRENT",
                "ADAPTERD_TENANT_TOKENS_PER_MIN", "ADAPTERD_TENANT_MAX_STORED_BYTES"):
        assert env in p.stdout, "%s missing from --help" % env
    for cmd in ("adapterd tenant add NAME", "adapterd tenant set NAME", "adapterd tenant list",
                "adapterd key add --tenant NAME", "adapterd key list", "adapterd key revoke ID"):
        assert cmd in p.stdout, "usage lacks %r" % cmd
    md = run("--help-markdown", data=None)
    expect(md, 0, "--help-markdown")
    assert "| `--insecure-no-auth N` | `ADAPTERD_INSECURE_NO_AUTH` | `0` | serve |" in md.stdout
    assert "| `--share W` | (command line only) | `1` | tenant |" in md.stdout, md.stdout


def t_tenant_add():
    p = run("tenant", "add", "acme")
    expect(p, 0, "tenant add acme")
    kv, name = tenant_line(p)
    assert name == "acme" and int(kv["id"]) > 1, p.stdout
    assert kv["max_concurrent"] == kv["tokens_per_min"] == kv["max_stored_bytes"] == "inherit"
    assert kv["share"] == "1", p.stdout
    p = run("tenant", "add", "beta", "--max-concurrent", "4", "--tokens-per-min", "unlimited",
            "--max-stored-bytes=1000000", "--share", "2.5")
    expect(p, 0, "tenant add beta with quotas")
    kv, _ = tenant_line(p)
    assert (kv["max_concurrent"], kv["tokens_per_min"], kv["max_stored_bytes"], kv["share"]) == \
        ("4", "unlimited", "1000000", "2.5"), p.stdout


def t_tenant_refusals():
    p = run("tenant", "add", "acme")
    expect(p, 1, "duplicate tenant")
    assert "exists" in p.stderr and not p.stdout, p.stderr
    p = run("tenant", "add", "default")
    expect(p, 1, "the built-in tenant")
    for bad in ("bad name", "-x", "a" * 65, "../etc"):
        p = run("tenant", "add", bad)
        expect(p, 2, "tenant add %r" % bad)
        assert "invalid" in p.stderr and not p.stdout, p.stderr
    for flag, value in (("--share", "0"), ("--share", "inf"), ("--share", "nan"),
                        ("--share", "-1"), ("--share", "0x10"), ("--max-concurrent", "-2"),
                        ("--tokens-per-min", "lots"), ("--max-stored-bytes", "1e3")):
        p = run("tenant", "add", "gamma", flag, value)
        expect(p, 2, "%s %s" % (flag, value))
        assert flag in p.stderr, p.stderr
    expect(run("tenant"), 2, "tenant without an action")
    expect(run("tenant", "frob"), 2, "unknown action")
    expect(run("tenant", "add"), 2, "tenant add without NAME")
    p = run("tenant", "list", "--share", "2")
    expect(p, 2, "tenant list --share")
    assert "--share" in p.stderr, p.stderr
    p = run("tenant", "add", "gamma", "--port", "80")
    expect(p, 2, "a serve flag on tenant add")
    assert "--port" in p.stderr, p.stderr
    p = run("tenant", "list")
    assert "gamma" not in p.stdout, "a refused add left a row:\n" + p.stdout


def t_tenant_set():
    p = run("tenant", "set", "beta", "--share", "3")
    expect(p, 0, "tenant set beta --share 3")
    kv, name = tenant_line(p)
    assert name == "beta" and kv["share"] == "3", p.stdout
    assert kv["max_concurrent"] == "4" and kv["max_stored_bytes"] == "1000000", \
        "set changed flags it was not given: " + p.stdout
    p = run("tenant", "set", "beta", "--max-concurrent", "inherit", "--tokens-per-min", "0")
    expect(p, 0, "tenant set beta quotas")
    kv, _ = tenant_line(p)
    assert (kv["max_concurrent"], kv["tokens_per_min"], kv["share"]) == \
        ("inherit", "unlimited", "3"), p.stdout
    p = run("tenant", "set", "nobody", "--share", "2")
    expect(p, 1, "tenant set of an unknown tenant")
    assert "nobody" in p.stderr and "not found" in p.stderr, p.stderr


def t_tenant_list():
    p = run("tenant", "list")
    expect(p, 0, "tenant list")
    rows = {r["name"]: r for r in table(p)}
    assert p.stdout.split()[:6] == ["name", "id", "max_concurrent", "tokens_per_min",
                                    "max_stored_bytes", "share"], p.stdout
    assert set(rows) == {"acme", "beta", "default"}, p.stdout
    b = rows["beta"]
    assert (b["max_concurrent"], b["tokens_per_min"], b["max_stored_bytes"], b["share"]) == \
        ("inherit", "unlimited", "1000000", "3"), p.stdout
    assert rows["acme"]["max_concurrent"] == "inherit" and rows["default"]["id"] == "1"


class Keys:
    secret = None
    key_id = None
    admin_id = None


def data_bytes():
    """Every file under DATA_DIR (the index, its -wal/-shm, the lock, blobs), concatenated."""
    out = b""
    for d, _, files in os.walk(DATA):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out += fh.read()
    return out


def t_key_add():
    p = run("key", "add", "--tenant", "acme", "--label", "ci bot")
    expect(p, 0, "key add")
    assert p.stdout.endswith("\n") and p.stdout.count("\n") == 1, repr(p.stdout)
    m = SECRET_RE.match(p.stdout.rstrip("\n"))
    assert m, "stdout is not exactly one secret line: %r" % p.stdout
    Keys.secret, Keys.key_id = p.stdout.rstrip("\n"), m.group(1)
    want = ("key %s for tenant acme (role tenant) created; store the secret now, it is not "
            "shown again" % Keys.key_id)
    assert want in p.stderr, p.stderr
    assert Keys.secret not in p.stderr, "the secret leaked to stderr"
    p = run("key", "add", "--tenant", "beta", "--role", "admin")
    expect(p, 0, "key add --role admin")
    m = SECRET_RE.match(p.stdout.rstrip("\n"))
    assert m and "(role admin)" in p.stderr, (p.stdout, p.stderr)
    Keys.admin_id = m.group(1)
    assert p.stdout.rstrip("\n") != Keys.secret, "two keys share a secret"


def t_secret_not_stored():
    assert Keys.secret, "no secret from key add"
    blob = data_bytes()
    assert len(blob) > 0, "DATA_DIR is empty"
    body = Keys.secret.split("_", 2)[2]
    assert Keys.secret.encode() not in blob and body.encode() not in blob, \
        "the secret is stored under DATA_DIR"


def t_key_refusals():
    p = run("key", "add", "--tenant", "nobody")
    expect(p, 1, "key add for an unknown tenant")
    assert "nobody" in p.stderr and not p.stdout, (p.stdout, p.stderr)
    p = run("key", "add", "--tenant", "acme", "--role", "root")
    expect(p, 2, "bad --role")
    assert "--role" in p.stderr and not p.stdout, p.stderr
    expect(run("key", "add"), 2, "key add without --tenant")
    expect(run("key", "add", "--tenant", "acme", "--share", "2"), 2, "--share on key add")
    expect(run("key", "revoke"), 2, "key revoke without ID")
    p = run("key", "add", "--tenant", "acme", "--label", "tab\there")
    expect(p, 2, "a label with a control character")
    assert not p.stdout, p.stdout


def t_key_list():
    p = run("key", "list")
    expect(p, 0, "key list")
    assert Keys.secret and Keys.secret not in p.stdout and "adk_" not in p.stdout, \
        "key list shows a secret"
    head = p.stdout.splitlines()[0].split()
    assert head == ["id", "tenant", "role", "label", "created", "revoked"], head
    rows = {line.split()[0]: line for line in p.stdout.splitlines()[1:]}
    assert set(rows) == {Keys.key_id, Keys.admin_id}, p.stdout
    assert re.match(r"^%s +acme +tenant +ci bot +%s +-$" % (Keys.key_id, ISO_RE),
                    rows[Keys.key_id]), rows[Keys.key_id]
    assert re.match(r"^%s +beta +admin +- +%s +-$" % (Keys.admin_id, ISO_RE),
                    rows[Keys.admin_id]), rows[Keys.admin_id]
    p = run("key", "list", "--tenant", "beta")
    expect(p, 0, "key list --tenant beta")
    assert Keys.admin_id in p.stdout and Keys.key_id not in p.stdout, p.stdout
    expect(run("key", "list", "--tenant", "nobody"), 1, "key list --tenant unknown")


def t_key_revoke():
    p = run("key", "revoke", Keys.key_id)
    expect(p, 0, "key revoke")
    assert p.stdout.strip() == "key %s revoked" % Keys.key_id, p.stdout
    p = run("key", "list", "--tenant", "acme")
    line = [x for x in p.stdout.splitlines() if x.startswith(Keys.key_id)][0]
    assert re.search(r"%s +%s$" % (ISO_RE, ISO_RE), line), "not shown revoked: " + line
    p = run("key", "revoke", "0123456789ab")
    expect(p, 1, "revoke an unknown key")
    assert "0123456789ab" in p.stderr, p.stderr


def t_cli_only_flags():
    """--role and the quota flags never come from the environment or a config file."""
    p = run("key", "add", "--tenant", "acme", env={"ADAPTERD_ROLE": "admin"})
    expect(p, 0, "key add with ADAPTERD_ROLE=admin in the environment")
    assert "(role tenant)" in p.stderr, p.stderr
    conf = os.path.join(WORK, "cli.conf")
    with open(conf, "w") as f:
        f.write("role = admin\n")
    p = run("key", "list", "--config", conf)
    expect(p, 2, "role in a config file")
    assert "role" in p.stderr and "command line" in p.stderr, p.stderr
    with open(conf, "w") as f:
        f.write("# the daemon's file: serve options are fine here\nport = 9000\n"
                "tenant-max-concurrent = 8\n")
    expect(run("tenant", "list", "--config", conf), 0, "tenant list with a serve config file")


def busy_ok(p, what):
    expect(p, 1, what)
    assert "/v1/admin" in p.stderr and not p.stdout, (p.stdout, p.stderr)


def t_lock_flock():
    fd = os.open(os.path.join(DATA, "adapterd.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy_ok(run("key", "add", "--tenant", "acme"), "key add while the lock is held")
        busy_ok(run("tenant", "add", "delta"), "tenant add while the lock is held")
        busy_ok(run("tenant", "list"), "tenant list while the lock is held")
    finally:
        os.close(fd)
    expect(run("tenant", "list"), 0, "tenant list once the lock is free")


def t_lock_daemon():
    d = daemon.Daemon(data_dir=DATA, args=["--log-level", "warn"])
    try:
        busy_ok(run("key", "add", "--tenant", "acme"), "key add while a daemon serves DATA_DIR")
    finally:
        rc = d.stop()
    assert rc == 0, "daemon exit %r" % rc
    expect(run("key", "list"), 0, "key list after the daemon stopped")


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    tap = daemon.Tap()
    if not os.path.exists(daemon.binary()):
        tap.check(False, "adapterd binary exists", daemon.binary())
        return tap.done()
    tap.run("--help lists the tenant/key commands and the new flags", t_help)
    tap.run("tenant add prints one line with id and quotas (inherit by default)", t_tenant_add)
    tap.run("tenant add refuses duplicates (1), bad names and values (2)", t_tenant_refusals)
    tap.run("tenant set changes only the flags given; unknown tenant is 1", t_tenant_set)
    tap.run("tenant list: a table with inherit/unlimited/number", t_tenant_list)
    tap.run("key add: exactly one secret line on stdout, the id on stderr", t_key_add)
    tap.run("the secret is nowhere under DATA_DIR (index, -wal, blobs)", t_secret_not_stored)
    tap.run("key add: unknown tenant 1, bad role 2, missing --tenant 2", t_key_refusals)
    tap.run("key list shows id, tenant, role, label, ISO times, never a secret", t_key_list)
    tap.run("key revoke: exit 0, list shows it revoked; unknown is 1", t_key_revoke)
    tap.run("--role and quotas come from the command line only", t_cli_only_flags)
    tap.run("a held adapterd.lock refuses the commands, pointing at the admin API",
            t_lock_flock)
    tap.run("a running daemon refuses key add (exit 1, admin API)", t_lock_daemon)
    rc = tap.done()
    if rc == 0 and not os.environ.get("KEEP_TMP"):
        shutil.rmtree(WORK, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
