// Fails when src/gen differs from what `npm run generate` makes now: the
// generated code is committed, so a proto change must come with it.
// Regenerates into a temporary directory and compares the two trees.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";

const COMMITTED = "src/gen";

function files(root) {
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(root, join(entry.parentPath ?? entry.path, entry.name)))
    .sort();
}

const scratch = mkdtempSync(join(tmpdir(), "creditledger-ts-gen-"));
try {
  execFileSync("buf", ["generate", "--output", scratch], { stdio: "inherit" });
  const fresh = join(scratch, COMMITTED);
  const want = files(fresh);
  const have = files(COMMITTED);
  const stale = [
    ...want.filter((f) => !have.includes(f)).map((f) => `missing ${f}`),
    ...have.filter((f) => !want.includes(f)).map((f) => `extra ${f}`),
    ...want
      .filter((f) => have.includes(f))
      .filter((f) => !readFileSync(join(fresh, f)).equals(readFileSync(join(COMMITTED, f))))
      .map((f) => `changed ${f}`),
  ];
  if (stale.length > 0) {
    console.error(`generated code is stale (run npm run generate):\n  ${stale.join("\n  ")}`);
    process.exit(1);
  }
  console.log(`generate:check: ${want.length} generated files are up to date`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
