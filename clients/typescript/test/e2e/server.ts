// Starts the real Python server on loopback against a fresh database, for the
// end-to-end tests, and takes both down afterwards.
//
// LEDGER_PYTHON: the Python that has the server installed
//   (default ../../.venv/bin/python relative to clients/typescript).
// LEDGER_TEST_DATABASE_URL: an admin URL of a PostgreSQL that may create
//   databases (default postgresql://postgres@127.0.0.1:5432/postgres).
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:net";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { AccountNotFound, LedgerClient } from "../../src/index.js";

/** clients/typescript, from dist/test/e2e/server.js. */
const PACKAGE_DIR = fileURLToPath(new URL("../../../", import.meta.url));
const REPO_DIR = resolve(PACKAGE_DIR, "../..");
const STARTUP_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;

export const python = process.env["LEDGER_PYTHON"] ?? resolve(PACKAGE_DIR, "../../.venv/bin/python");
const adminUrl = process.env["LEDGER_TEST_DATABASE_URL"] ?? "postgresql://postgres@127.0.0.1:5432/postgres";

/** Runs one SQL statement with the server's own driver (asyncpg), so the test needs no psql or npm pg. */
async function adminSql(statement: string): Promise<void> {
  const script = [
    "import asyncio, sys, asyncpg",
    "async def main():",
    "    conn = await asyncpg.connect(sys.argv[1])",
    "    try:",
    "        await conn.execute(sys.argv[2])",
    "    finally:",
    "        await conn.close()",
    "asyncio.run(main())",
  ].join("\n");
  await promisify(execFile)(python, ["-c", script, adminUrl, statement], { timeout: 30_000 });
}

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  if (address === null || typeof address === "string") {
    throw new Error("no TCP address for a free port");
  }
  return address.port;
}

export interface LedgerServer {
  /** "127.0.0.1:PORT" to give LedgerClient. */
  readonly target: string;
  /** What the server printed, for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

async function waitUntilServing(target: string, child: ChildProcess, output: () => string): Promise<void> {
  // Serving means answering a real RPC: a NotFound for an account that does not exist.
  const probe = new LedgerClient({ target, timeoutMs: 1_000, retry: { maxAttempts: 1 } });
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  try {
    for (;;) {
      if (child.exitCode !== null || child.pid === undefined) {
        throw new Error(`ledger serve exited with ${String(child.exitCode)}:\n${output()}`);
      }
      try {
        await probe.getAccount({ accountId: "readiness-probe" });
        return;
      } catch (error) {
        if (error instanceof AccountNotFound) {
          return;
        }
      }
      if (Date.now() > deadline) {
        throw new Error(`ledger serve did not answer within ${String(STARTUP_TIMEOUT_MS)} ms:\n${output()}`);
      }
      await new Promise((done) => setTimeout(done, 200));
    }
  } finally {
    probe.close();
  }
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return;
  }
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
  await exited;
  clearTimeout(timer);
}

/**
 * The admin URL with another database name. Not through `new URL`: the
 * embedded PostgreSQL's URL has an empty host and a socket directory in the
 * query (postgresql://postgres:@/postgres?host=/tmp/...), which WHATWG URL rejects.
 */
export function withDatabase(url: string, database: string): string {
  const match = /^(postgres(?:ql)?:\/\/[^/?]*)(?:\/[^?]*)?(\?.*)?$/.exec(url);
  if (match === null) {
    throw new Error(`cannot set the database name in ${url}`);
  }
  return `${match[1] ?? ""}/${database}${match[2] ?? ""}`;
}

/** Creates database ledger_ts_<random>, starts `ledger serve` on it, waits until it answers. */
export async function startLedgerServer(): Promise<LedgerServer> {
  const database = `ledger_ts_${randomBytes(6).toString("hex")}`;
  await adminSql(`CREATE DATABASE ${database}`);
  const databaseUrl = withDatabase(adminUrl, database);
  const target = `127.0.0.1:${String(await freePort())}`;
  const metricsTarget = `127.0.0.1:${String(await freePort())}`;
  const args = ["-m", "ledger", "serve", "--listen", target, "--database-url", databaseUrl];
  args.push("--metrics-listen", metricsTarget);
  const child = spawn(python, args, { cwd: REPO_DIR, stdio: ["ignore", "pipe", "pipe"] });
  let printed = "";
  const keep = (chunk: Buffer): void => {
    printed = (printed + chunk.toString()).slice(-20_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  child.on("error", (error) => keep(Buffer.from(`\ncould not run ${python}: ${error.message}\n`)));
  const stop = async (): Promise<void> => {
    await stopProcess(child);
    await adminSql(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  };
  try {
    await waitUntilServing(target, child, () => printed);
  } catch (error) {
    await stop();
    throw error;
  }
  return { target, output: () => printed, stop };
}
