"""test_routing_http.py - learned routing over LoRA adapters through the HTTP API and the CLI
(docs/API.md "Routing", the `router` / `return_routing` completion fields, core/router.h's
on-disk formats; issue 7).

Fixtures (tests/tmp/routing_http-<pid>/, removed when everything passed), on the tiny model of
daemon.tiny_model() (2 layers, hidden 64), written with tools/hf_fixtures.py and the router
writers of tests/ref/test_routing.py:

    sql-a   r4 alpha 8   q,v          chat-b  r8 alpha 16  o,down
    math-c  r8 alpha 16 rsLoRA, all   extra-d r4 alpha 8   q,k
    pg      router_config.json PHATGOOSE [sql-a, chat-b, math-c] top_k 2 + gates, no
            sub-folders (its experts are the adapters of the same --adapters-dir)
    xl      X-LoRA, PEFT format, sub-folders [sql-a, math-c, chat-b] -> xl.sql-a, ...
    xo      X-LoRA, original repo's format, sub-folders [chat-b, sql-a]
Over HTTP: ar (Arrow over the three, top_k 2), pg2 (pg's config and gates as base64: the
same router, so the same greedy text), one (Arrow over math-c alone, top_k 1: math-c's text).

Checks: listing (kinds, pinned experts); POST /v1/routers; completions by `model`, by
`router` with overrides, `return_routing` (plain and streamed) and its shape; greedy
determinism; routing changes the output; the refusals (400/404/409/422); 8 concurrent mixed
requests == each alone; a restart on the same data dir; `adapterd import` of router folders
with --experts and with a broken (DoRA) expert. Prints TAP; exits non-zero if anything failed.
Run with /usr/bin/python3 from the repo root.
"""

import base64
import json
import math
import os
import shutil
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import daemon  # noqa: E402

sys.path.insert(0, os.path.join(daemon.ROOT, "tools"))
sys.path.insert(0, os.path.join(daemon.ROOT, "tests", "ref"))
import hf_fixtures as hf  # noqa: E402
import numpy as np  # noqa: E402
import test_routing as tr  # noqa: E402  (router folder writers; its main() does not run)

MODEL = "tiny"
PROMPT = "Once upon a time"
MAX_TOKENS = 16
WORK = os.path.join(daemon.TMP, "routing_http-%d" % os.getpid())
FX = os.path.join(WORK, "fx")        # expert folders and router folders being written
ADIR = os.path.join(WORK, "adapters")  # --adapters-dir
DATA = os.path.join(WORK, "data")
TIMEOUT = 30.0  # times daemon.slowdown(), set in main()

EXPERTS = {  # name: (seed, r, alpha, targets, layers, rslora), as test_routing.EXPERTS
    "sql-a": (51, 4, 8, ["q_proj", "v_proj"], None, False),
    "chat-b": (52, 8, 16, ["o_proj", "down_proj"], None, False),
    "math-c": (53, 8, 16, list(hf.MODULES), None, True),
    "extra-d": (54, 4, 8, ["q_proj", "k_proj"], None, False),
}
TRIO = ["sql-a", "chat-b", "math-c"]
XL = ["sql-a", "math-c", "chat-b"]
XO = ["chat-b", "sql-a"]
# router -> (kind, expert names as its config gives them, stored expert specs)
ROUTERS = {
    "pg": ("phatgoose", TRIO, [e + "@1" for e in TRIO]),
    "xl": ("xlora", XL, ["xl.%s@1" % e for e in XL]),
    "xo": ("xlora", XO, ["xo.%s@1" % e for e in XO]),
    "ar": ("arrow", TRIO, [e + "@1" for e in TRIO]),
    "pg2": ("phatgoose", TRIO, [e + "@1" for e in TRIO]),
}

tap = daemon.Tap()


# ---- fixtures ------------------------------------------------------------------------------

def make_fixtures():
    """Writes FX/experts/*, ADIR (4 adapters, pg, xl, xo) and FX/bad (a router folder whose
    math-c expert uses DoRA), FX/cli (Arrow, config names x,y,z, no sub-folders).
    -> the base config."""
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(ADIR)
    with open(os.path.join(daemon.tiny_model(), "config.json")) as f:
        c = json.load(f)
    tr.TMP, tr.EXPERTS, tr.N_LAYERS = FX, EXPERTS, c["num_hidden_layers"]
    assert tr.DIM == c["hidden_size"], "test_routing.DIM %d != tiny hidden %d" % (
        tr.DIM, c["hidden_size"])
    for n, (seed, r, alpha, targets, layers, rs) in EXPERTS.items():
        hf.make_lora(tr.P("experts", n), c, seed=seed, r=r, alpha=alpha, targets=targets,
                     layers=layers, rslora=rs)
        shutil.copytree(tr.P("experts", n), os.path.join(ADIR, n))
    rng = np.random.default_rng(77)
    d = tr.make_phatgoose(c, "pg", TRIO, 2, rng, temperature=1.0)
    for e in TRIO:  # no sub-folders: the experts are the stored adapters of those names
        shutil.rmtree(os.path.join(d, e))
    shutil.move(d, os.path.join(ADIR, "pg"))
    shutil.move(tr.make_xlora_peft(c, "xl", XL, 1, False, rng), os.path.join(ADIR, "xl"))
    shutil.move(tr.make_xlora_orig(c, "xo", XO, 2, True, rng, relu=True, bias=True,
                                   as_map=False), os.path.join(ADIR, "xo"))
    bad = tr.make_xlora_peft(c, "bad", XL, 1, False, rng)
    cfgp = os.path.join(bad, "math-c", "adapter_config.json")
    with open(cfgp) as f:
        cfg = json.load(f)
    cfg["use_dora"] = True
    tr.write_json(cfgp, cfg)
    os.makedirs(tr.P("cli"))
    tr.write_json(tr.P("cli", "router_config.json"),
                  {"router_type": "arrow", "experts": ["x", "y", "z"], "top_k": 2})
    return c


# ---- HTTP helpers --------------------------------------------------------------------------

def call(d, method, path, body=None):
    st, _, data = d.request(method, path, body, timeout=TIMEOUT)
    try:
        return st, json.loads(data)
    except ValueError:
        return st, data


def code_of(body):
    return body["error"].get("code") if isinstance(body, dict) and "error" in body else None


def cmpl(d, model, **extra):
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    body.update(extra)
    return call(d, "POST", "/v1/completions", body)


def text(d, model, **extra):
    st, body = cmpl(d, model, **extra)
    assert st == 200, "completion %s %r: %d %r" % (model, extra, st, body)
    t = body["choices"][0]["text"]
    assert isinstance(t, str), body
    return t


def stream(d, model, **extra):
    """-> (status, [chunk dicts], saw [DONE] last)."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True}
    body.update(extra)
    st, _, data = d.request("POST", "/v1/completions", body, timeout=TIMEOUT)
    chunks, done_last = [], False
    for ev in data.decode().split("\n\n"):
        ev = ev.strip()
        if not ev.startswith("data: "):
            continue
        payload = ev[6:]
        done_last = payload == "[DONE]"
        if not done_last:
            chunks.append(json.loads(payload))
    return st, chunks, done_last


def expect(st, body, want_st, want_code=None, what=""):
    assert st == want_st, "%s: status %d, want %d: %r" % (what, st, want_st, body)
    if want_code is not None:
        assert code_of(body) == want_code, "%s: code %r, want %r: %r" % (
            what, code_of(body), want_code, body)


def check_router_obj(obj, name):
    kind, _, specs = ROUTERS[name]
    assert obj.get("name") == name and obj.get("kind") == kind, \
        "%s: name/kind %r/%r, want %s: %r" % (name, obj.get("name"), obj.get("kind"), kind, obj)
    assert obj.get("experts") == specs, "%s: experts %r, want %r" % (
        name, obj.get("experts"), specs)


def check_routing(name, routing, n_layers, sums_to_one):
    """routing = {"adapters": [...], "layers": [[...] * n_experts] * n_layers}."""
    _, names, specs = ROUTERS[name]
    stored = [s.split("@")[0] for s in specs]
    assert isinstance(routing, dict), "%s: routing %r" % (name, routing)
    assert routing.get("adapters") in (names, stored), \
        "%s: routing.adapters %r, want %r (or %r)" % (name, routing.get("adapters"), names,
                                                      stored)
    layers = routing.get("layers")
    assert isinstance(layers, list) and len(layers) == n_layers, \
        "%s: routing.layers has %s rows, want %d: %r" % (name, len(layers or []), n_layers,
                                                         layers)
    for i, row in enumerate(layers):
        assert isinstance(row, list) and len(row) == len(names), \
            "%s: layers[%d] %r: want %d numbers" % (name, i, row, len(names))
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   and v >= 0 for v in row), "%s: layers[%d] %r" % (name, i, row)
        s = sum(row)
        assert s <= 1 + 1e-4, "%s: layers[%d] sums to %.6f > 1: %r" % (name, i, s, row)
        if sums_to_one:
            assert abs(s - 1) <= 1e-4, "%s: layers[%d] sums to %.6f, want 1: %r" % (
                name, i, s, row)


# ---- the tests -----------------------------------------------------------------------------

class S:
    """What earlier checks learn and later ones compare against."""
    texts = {}     # (model, top_k) -> greedy text
    routing = {}   # router -> routing of the plain request
    base = None


def t_listing(d):
    st, body = call(d, "GET", "/v1/adapters")
    expect(st, body, 200, what="GET /v1/adapters")
    by = {o["name"]: o for o in body["data"]}
    for n in EXPERTS:
        assert n in by and by[n]["kind"] == "lora", "adapter %s: %r" % (n, by.get(n))
    for n in ("pg", "xl", "xo"):
        assert n in by, "router %s not listed (names: %s)" % (n, sorted(by))
        check_router_obj(by[n], n)
    for r, names in (("xl", XL), ("xo", XO)):
        for e in names:
            o = by.get("%s.%s" % (r, e))
            assert o and o["kind"] == "lora" and o["version"] == 1, \
                "imported expert %s.%s: %r" % (r, e, o)
    st, one = call(d, "GET", "/v1/adapters/pg@1")
    expect(st, one, 200, what="GET /v1/adapters/pg@1")
    check_router_obj(one, "pg")


def t_post_routers(d):
    st, body = call(d, "POST", "/v1/routers", {"name": "ar", "config": {
        "router_type": "arrow", "experts": TRIO, "top_k": 2}})
    expect(st, body, 201, what="POST /v1/routers arrow")
    check_router_obj(body, "ar")
    assert body["id"] == "ar@1" and body["version"] == 1, body
    with open(os.path.join(ADIR, "pg", "router_config.json"), "rb") as f:
        cfg = json.load(f)
    with open(os.path.join(ADIR, "pg", "router_gates.safetensors"), "rb") as f:
        gates = base64.b64encode(f.read()).decode()
    st, body = call(d, "POST", "/v1/routers", {"name": "pg2", "config": cfg,
                                                "experts": TRIO, "weights": gates})
    expect(st, body, 201, what="POST /v1/routers phatgoose with base64 gates")
    check_router_obj(body, "pg2")
    st, body = call(d, "POST", "/v1/routers", {"name": "one", "config": {
        "router_type": "arrow", "experts": ["math-c"], "top_k": 1}})
    expect(st, body, 201, what="POST /v1/routers arrow over one expert")


def t_complete_each(d):
    S.base = text(d, MODEL)
    for r in ROUTERS:
        S.texts[(r, 0)] = text(d, r)
        S.texts[(r, 1)] = text(d, MODEL, router={"name": r, "top_k": 1, "temperature": 0.5})
    # the other selectors take a router alone too
    assert text(d, MODEL, adapter="pg") == S.texts[("pg", 0)], "`adapter`: pg differs"
    assert text(d, MODEL, router={"name": "pg"}) == S.texts[("pg", 0)], "`router`: pg differs"


def t_return_routing(d, n_layers):
    for r in ROUTERS:
        st, body = cmpl(d, r, return_routing=True)
        expect(st, body, 200, what="%s return_routing" % r)
        assert body["choices"][0]["text"] == S.texts[(r, 0)], \
            "%s: return_routing changed the text" % r
        check_routing(r, body.get("routing"), n_layers, ROUTERS[r][0] != "xlora")
        S.routing[r] = body["routing"]
    st, body = cmpl(d, MODEL, router={"name": "ar", "top_k": 1}, return_routing=True)
    expect(st, body, 200, what="ar top_k 1 return_routing")
    check_routing("ar", body.get("routing"), n_layers, True)


def t_stream_routing(d, n_layers):
    for r in ("pg", "xl"):
        st, chunks, done = stream(d, r, return_routing=True)
        assert st == 200 and done, "%s stream: status %d, [DONE] last %s" % (r, st, done)
        withr = [i for i, c in enumerate(chunks) if "routing" in c]
        assert len(withr) == 1, "%s stream: %d chunks carry routing" % (r, len(withr))
        check_routing(r, chunks[withr[0]]["routing"], n_layers, r == "pg")
        fin = [i for i, c in enumerate(chunks) if c.get("choices") and
               c["choices"][0].get("finish_reason")]
        assert fin and fin[0] < withr[0] == len(chunks) - 1, \
            "%s stream: the routing chunk (%d) is not the last before [DONE] after the finish " \
            "chunk (%s) of %d" % (r, withr[0], fin, len(chunks))
        txt = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
        assert txt == S.texts[(r, 0)], "%s stream text %r != %r" % (r, txt, S.texts[(r, 0)])
        got, want = chunks[withr[0]]["routing"]["layers"], S.routing[r]["layers"]
        err = max(abs(a - b) for ra, rb in zip(got, want) for a, b in zip(ra, rb))
        assert err <= 1e-3, "%s stream routing differs from plain by %.3g" % (r, err)


def t_determinism(d):
    for r in ROUTERS:
        t = text(d, r)
        assert t == S.texts[(r, 0)], "%s: %r then %r" % (r, S.texts[(r, 0)], t)
    assert S.texts[("pg2", 0)] == S.texts[("pg", 0)], \
        "pg2 (pg's config and gates over HTTP) %r != pg %r" % (S.texts[("pg2", 0)],
                                                                S.texts[("pg", 0)])


def t_one_expert(d):
    got, want = text(d, "one"), text(d, "math-c")
    assert got == want, "Arrow over math-c alone (top_k 1) %r != math-c %r" % (got, want)


def t_differs(d):
    diff = [r for r in ROUTERS if S.texts[(r, 0)] != S.base]
    print("# routed texts that differ from base: %s" % diff, flush=True)
    assert diff, "every routed text equals the base's %r" % S.base


def t_refusals_select(d):
    st, body = cmpl(d, MODEL, adapters=[{"name": "pg", "weight": 1}])
    expect(st, body, 400, "invalid_value", "router inside adapters")
    assert "pg" in body["error"]["message"], body
    st, body = cmpl(d, MODEL, adapters=[{"name": "sql-a"}, {"name": "xl"}])
    expect(st, body, 400, "invalid_value", "router as the second term of adapters")
    st, body = cmpl(d, MODEL, lora=[{"id": "ar", "scale": 1}])
    assert st == 400, "router inside lora: %d %r" % (st, body)


def t_refusals_fields(d):
    st, body = cmpl(d, "sql-a", return_routing=True)
    expect(st, body, 400, "invalid_value", "return_routing with a plain adapter")
    st, body = cmpl(d, MODEL, return_routing=True)
    expect(st, body, 400, None, "return_routing on the base")
    st, body = cmpl(d, MODEL, router={"name": "pg", "top_k": 4})
    expect(st, body, 400, None, "router.top_k 4 over 3 experts")
    st, body = cmpl(d, MODEL, router={"name": "xo", "top_k": 3})
    expect(st, body, 400, None, "router.top_k 3 over xo's 2 experts")
    st, body = cmpl(d, MODEL, router={"name": "pg", "temperature": 0})
    expect(st, body, 400, None, "router.temperature 0")
    st, body = cmpl(d, MODEL, router={"name": "sql-a"})
    expect(st, body, 400, None, "router.name naming a plain adapter")
    st, body = cmpl(d, MODEL, router={"name": "pg"}, adapter="sql-a")
    expect(st, body, 400, None, "router with adapter")


def t_refusals_unknown(d):
    st, body = cmpl(d, "ghost-router")
    expect(st, body, 404, "model_not_found", "model: unknown router")
    st, body = cmpl(d, MODEL, router={"name": "ghost-router"})
    expect(st, body, 404, "model_not_found", "router.name unknown")
    assert "ghost-router" in body["error"]["message"], body


def t_refusals_post(d):
    st, body = call(d, "POST", "/v1/routers", {"name": "nope", "config": {
        "router_type": "arrow", "experts": ["sql-a", "ghost-expert"]}})
    expect(st, body, 404, "model_not_found", "POST /v1/routers unknown expert")
    assert "ghost-expert" in body["error"]["message"], body
    st, body = call(d, "POST", "/v1/routers", {"name": "nope", "config": {
        "router_type": "phatgoose", "experts": TRIO, "top_k": 2}})
    expect(st, body, 422, None, "POST /v1/routers phatgoose without weights")
    st, body = call(d, "POST", "/v1/routers", {"name": "nope", "config": {
        "router_type": "arrow", "experts": TRIO}, "experts": ["sql-a", "chat-b"]})
    assert st in (400, 422), "experts count != config's: %d %r" % (st, body)
    st, body = call(d, "GET", "/v1/adapters/nope")
    expect(st, body, 404, None, "a refused router is not stored")


def t_delete(d):
    st, body = call(d, "POST", "/v1/routers", {"name": "tmp-r", "config": {
        "router_type": "arrow", "experts": ["extra-d", "sql-a"]}})
    expect(st, body, 201, what="POST tmp-r")
    assert body.get("experts") == ["extra-d@1", "sql-a@1"], body
    for spec in ("extra-d@1", "extra-d"):
        st, body = call(d, "DELETE", "/v1/adapters/" + spec)
        expect(st, body, 409, "expert_in_use", "DELETE %s used by tmp-r" % spec)
        assert "tmp-r" in body["error"]["message"], body
    assert text(d, "extra-d") is not None  # still served
    st, body = call(d, "DELETE", "/v1/adapters/tmp-r")
    expect(st, body, 200, what="DELETE tmp-r")
    st, body = call(d, "DELETE", "/v1/adapters/extra-d@1")
    expect(st, body, 200, what="DELETE extra-d@1 after its router")
    st, body = cmpl(d, "tmp-r")
    expect(st, body, 404, "model_not_found", "the deleted router")


def t_concurrent(d):
    reqs = [("pg", {}), ("xl", {}), ("xo", {}), ("ar", {}),
            (MODEL, {"router": {"name": "ar", "top_k": 1, "temperature": 0.5}}),
            ("sql-a", {}), (MODEL, {}), ("pg2", {})]
    want = [text(d, m, **x) for m, x in reqs]  # alone, one after the other
    got = [None] * len(reqs)
    gate = threading.Barrier(len(reqs))

    def worker(i):
        try:
            gate.wait(TIMEOUT)
            m, x = reqs[i]
            st, body = cmpl(d, m, **x)
            got[i] = body["choices"][0]["text"] if st == 200 else "status %d: %r" % (st, body)
        except Exception as e:  # noqa: BLE001
            got[i] = "%s: %s" % (type(e).__name__, e)

    ths = [threading.Thread(target=worker, args=(i,)) for i in range(len(reqs))]
    for t in ths:
        t.start()
    for t in ths:
        t.join(2 * TIMEOUT)
    bad = ["%s %r: alone %r, concurrent %r" % (reqs[i][0], reqs[i][1], want[i], got[i])
           for i in range(len(reqs)) if got[i] != want[i]]
    assert not bad, "\n".join(bad)


def run_cli(*args):
    cmd = [daemon.binary(), "import"] + list(args) + ["--data-dir", DATA,
                                                      "--model", daemon.tiny_model()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=2 * TIMEOUT,
                          cwd=daemon.ROOT)


def t_cli_import():
    p = run_cli(tr.P("cli"), "--name", "cli-r", "--experts", "sql-a,chat-b@1,math-c")
    assert p.returncode == 0, "import cli-r: exit %d: %s" % (p.returncode, p.stderr[-500:])
    assert "cli-r" in p.stdout and "arrow" in p.stdout, "import cli-r stdout: %r" % p.stdout


def t_cli_broken():
    p = run_cli(tr.P("bad"), "--name", "bad-r")
    assert p.returncode != 0 and "math-c" in p.stderr and "Sanitizer" not in p.stderr, \
        "exit %d, stderr should name math-c: %s" % (p.returncode, p.stderr[-500:])
    print("# refused: %s" % p.stderr.strip().splitlines()[-1][:300], flush=True)


def t_restart(d):
    st, body = call(d, "GET", "/v1/adapters")
    expect(st, body, 200, what="GET /v1/adapters after restart")
    by = {o["name"]: o for o in body["data"]}
    for r in ROUTERS:
        assert r in by, "router %s not listed after restart" % r
        check_router_obj(by[r], r)
    assert "tmp-r" not in by and "bad-r" not in by, sorted(by)
    for r in ROUTERS:
        t = text(d, r)
        assert t == S.texts[(r, 0)], "%s after restart: %r, before %r" % (r, t, S.texts[(r, 0)])
        t = text(d, MODEL, router={"name": r, "top_k": 1, "temperature": 0.5})
        assert t == S.texts[(r, 1)], "%s top_k 1 after restart: %r, before %r" % (
            r, t, S.texts[(r, 1)])


def t_cli_router_serves(d, n_layers):
    st, obj = call(d, "GET", "/v1/adapters/cli-r@1")
    expect(st, obj, 200, what="GET /v1/adapters/cli-r@1")
    assert obj.get("kind") == "arrow" and obj.get("experts") == [
        "sql-a@1", "chat-b@1", "math-c@1"], obj
    st, body = cmpl(d, "cli-r", return_routing=True)
    expect(st, body, 200, what="cli-r completion")
    rt = body.get("routing") or {}
    assert len(rt.get("layers") or []) == n_layers and rt.get("adapters") in (
        ["x", "y", "z"], TRIO), rt
    # same experts, same Arrow config as ar: the same router
    assert body["choices"][0]["text"] == S.texts[("ar", 0)], \
        "cli-r %r != ar %r" % (body["choices"][0]["text"], S.texts[("ar", 0)])


def main():
    global TIMEOUT
    os.chdir(daemon.ROOT)
    if not os.access(daemon.binary(), os.X_OK):
        tap.check(False, "adapterd built", "no %s" % daemon.binary())
        return tap.done()
    TIMEOUT *= daemon.slowdown()
    c = make_fixtures()
    n_layers = c["num_hidden_layers"]
    args = ["--model-name", MODEL, "--adapters-dir", ADIR]
    try:
        d = daemon.Daemon(args, data_dir=DATA)
    except daemon.DaemonError as e:
        tap.check(False, "daemon starts with --adapters-dir holding adapters and routers", e)
        return tap.done()
    try:
        tap.run("--adapters-dir: adapters, the PHATGOOSE router (experts = the stored specs) "
                "and both X-LoRA routers with their imported NAME.EXPERT experts listed",
                t_listing, d)
        tap.run("POST /v1/routers: Arrow 201 kind arrow experts NAME@1; PHATGOOSE with "
                "base64 gates 201; Arrow over one expert 201", t_post_routers, d)
        ok = tap.run("completions by router name (each kind) and by `router` with top_k 1, "
                     "temperature 0.5: 200 with text", t_complete_each, d)
        if ok:
            tap.run("return_routing: routing.adapters = expert names, layers n_layers x "
                    "n_experts finite >= 0, rows <= 1 (PHATGOOSE/Arrow == 1)",
                    t_return_routing, d, n_layers)
            tap.run("streaming return_routing: the last chunk before [DONE] (after the "
                    "finish chunk) carries routing; same text and weights", t_stream_routing, d,
                    n_layers)
            tap.run("greedy determinism: the same routed request twice gives the same text; "
                    "pg2 == pg", t_determinism, d)
            tap.run("Arrow over one expert with top_k 1 == that adapter alone",
                    t_one_expert, d)
            tap.run("routed output differs from the base output for some router",
                    t_differs, d)
        else:
            for n in ("return_routing", "stream", "determinism", "one expert", "differs"):
                tap.check(False, n, "skipped: completions failed")
        tap.run("a router inside `adapters` / `lora`: 400 invalid_value", t_refusals_select, d)
        tap.run("return_routing without a router, top_k > experts, temperature 0, router.name "
                "naming an adapter, router + adapter: 400", t_refusals_fields, d)
        tap.run("unknown router by model and router.name: 404 model_not_found",
                t_refusals_unknown, d)
        tap.run("POST /v1/routers: unknown expert 404 model_not_found; PHATGOOSE without "
                "weights 422; wrong expert count refused; nothing stored", t_refusals_post, d)
        tap.run("DELETE an expert a router uses: 409 expert_in_use naming it; after deleting "
                "the router the adapter deletes", t_delete, d)
        if ok:
            tap.run("8 concurrent mixed requests (routed of each kind, single adapter, base): "
                    "all 200, each == its sequential greedy text", t_concurrent, d)
        else:
            tap.check(False, "concurrent", "skipped: completions failed")
    finally:
        st = d.stop()
    tap.check(st == 0, "daemon exits 0 on SIGTERM", "exit %s; log tail:\n%s" % (
        st, d.log()[-2000:]))

    tap.run("adapterd import of a router folder with --experts (daemon stopped)", t_cli_import)
    tap.run("adapterd import of a router folder whose expert uses DoRA: refused naming the "
            "expert", t_cli_broken)

    try:
        d = daemon.Daemon(["--model-name", MODEL], data_dir=DATA)
    except daemon.DaemonError as e:
        tap.check(False, "daemon restarts on the same data dir", e)
        return tap.done()
    try:
        if ok:
            tap.run("restart on the same data dir: routers listed, same greedy text",
                    t_restart, d)
        else:
            tap.check(False, "restart", "skipped: completions failed")
        tap.run("the CLI-imported router is listed with its pinned experts and serves ar's "
                "text", t_cli_router_serves, d, n_layers)
    finally:
        st = d.stop()
    tap.check(st == 0, "restarted daemon exits 0", "exit %s; log tail:\n%s" % (
        st, d.log()[-2000:]))
    rc = tap.done()
    if rc == 0 and not os.environ.get("KEEP_TMP"):
        shutil.rmtree(WORK, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
