// `npm run prepare`: builds dist/ so the package works when installed from a
// path, with no manual build (`npm install ../creditledger/clients/typescript`).
//
// npm runs `prepare` inside a package installed from a folder, but without
// its devDependencies (it links the folder and installs nothing there), so
// TypeScript may be missing: it is installed first from the lock file, with
// scripts off so this does not run again. Inside `npm ci` of this package
// they are already there and this only builds.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const packageDir = fileURLToPath(new URL("..", import.meta.url));
const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));
const npm = process.env["npm_execpath"];

if (!existsSync(tsc)) {
  const args = ["ci", "--include=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"];
  // npm_execpath is npm's own CLI script when npm runs this; fall back to `npm` on PATH.
  if (npm !== undefined && npm.endsWith(".js")) {
    execFileSync(process.execPath, [npm, ...args], { cwd: packageDir, stdio: "inherit" });
  } else {
    execFileSync("npm", args, { cwd: packageDir, stdio: "inherit" });
  }
}
execFileSync(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: packageDir, stdio: "inherit" });
