// daemon.mjs - start build/adapterd on a free loopback port for client tests.
// Generates the built-in default data (tools/make_default_data.py) into a scratch folder.
import { spawn, execFileSync } from "node:child_process";
import net from "node:net";
import fs from "node:fs";
import path from "node:path";

const BUILD = process.env.BUILD || "build";

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function makeData(dir) {
  fs.mkdirSync(dir, { recursive: true });
  execFileSync("/usr/bin/python3", ["tools/make_default_data.py", dir], { stdio: "ignore" });
  return dir;
}

export async function startDaemon({ dataDir, modelName = "tiny-llama", extraArgs = [] }) {
  const port = await freePort();
  const logPath = path.join(dataDir, `daemon-${port}.log`);
  const log = fs.openSync(logPath, "w");
  const proc = spawn(`${BUILD}/adapterd`, ["serve", "--host", "127.0.0.1", "--port", String(port),
    "--model", path.join(dataDir, "model"), "--model-name", modelName,
    "--adapters-dir", path.join(dataDir, "adapters"), "--data-dir", dataDir, ...extraArgs],
    { stdio: ["ignore", log, log] });
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`adapterd exited: ${fs.readFileSync(logPath, "utf8")}`);
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) { proc.kill("SIGKILL"); throw new Error("adapterd did not become healthy in 30 s"); }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    base, port, proc, logPath,
    async stop() {
      if (proc.exitCode !== null) return proc.exitCode;
      const exited = new Promise((r) => proc.on("exit", (code) => r(code)));
      proc.kill("SIGTERM");
      const t = setTimeout(() => proc.kill("SIGKILL"), 15000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

// Minimal TAP runner: tests run in order; each prints "ok N - name" or "not ok N - name".
export async function runTap(tests) {
  let n = 0, failed = 0;
  for (const [name, fn] of tests) {
    n++;
    try {
      await fn();
      console.log(`ok ${n} - ${name}`);
    } catch (e) {
      failed++;
      console.log(`not ok ${n} - ${name}`);
      for (const line of String(e && e.stack || e).split("\n").slice(0, 8)) console.log(`# ${line}`);
    }
  }
  console.log(`1..${n}`);
  return failed;
}
