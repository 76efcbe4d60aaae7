// Builds the live dashboard that `tickwire serve` ships (src/tickwire/dashboard/assets/):
// dashboard/*.js, the client (src/) and uPlot bundled by esbuild into one ES module and one
// stylesheet, the page, and the zstd decoder beside them. `manifest.json` records the
// SHA-256 of every input and output, so that a Python test can tell a shipped bundle from
// sources that changed since (tests/test_dashboard.py), and `--check` builds again into a
// scratch folder and fails if any shipped file differs from what the sources build.
//
//   node dashboard/build.mjs            # build into the Python package
//   node dashboard/build.mjs --check    # CI: the shipped files are what the sources build

import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const js = join(here, "..");
const repository = join(js, "..", "..");
const shipped = join(repository, "src", "tickwire", "dashboard", "assets");

// What the bundle is made of: every file that can change it.
const INPUTS = [
  "dashboard/index.html",
  "dashboard/dashboard.js",
  "dashboard/views.js",
  "dashboard/figures.js",
  "dashboard/dashboard.css",
  "dashboard/build.mjs",
  "src/client.js",
  "src/codec.js",
  "src/index.js",
  "src/table.js",
  "src/zstd.js",
  "src/zstd-decoder.wasm",
  "package.json",
  "package-lock.json",
];

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

async function build(out) {
  await mkdir(out, { recursive: true });
  await esbuild.build({
    entryPoints: [join(here, "dashboard.js")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: ["chrome100", "firefox100", "safari15"],
    minify: true,
    legalComments: "eof",
    external: ["node:*"], // zstd.js reads its wasm with node:fs only in Node
    outfile: join(out, "dashboard.js"),
    logLevel: "warning",
    absWorkingDir: js,
  });
  await copyFile(join(here, "index.html"), join(out, "index.html"));
  await copyFile(join(js, "src", "zstd-decoder.wasm"), join(out, "zstd-decoder.wasm"));
  const inputs = {};
  for (const name of INPUTS) inputs[name] = sha256(await readFile(join(js, name)));
  const outputs = {};
  for (const name of (await readdir(out)).sort()) {
    if (name === "manifest.json") continue;
    const bytes = await readFile(join(out, name));
    outputs[name] = { sha256: sha256(bytes), bytes: bytes.length, gzipped: gzipSync(bytes, { level: 9 }).length };
  }
  const manifest = { built_by: "clients/js/dashboard/build.mjs", esbuild: esbuild.version, inputs, outputs };
  await writeFile(join(out, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
  return manifest;
}

if (process.argv.includes("--check")) {
  const scratch = await mkdtemp(join(tmpdir(), "tickwire-dashboard-"));
  try {
    await build(scratch);
    const differ = [];
    for (const name of (await readdir(scratch)).sort()) {
      const [a, b] = await Promise.all([readFile(join(scratch, name)), readFile(join(shipped, name)).catch(() => null)]);
      if (b === null || sha256(a) !== sha256(b)) differ.push(name);
    }
    const built = new Set(await readdir(scratch));
    for (const name of await readdir(shipped)) if (!built.has(name)) differ.push(`${name} (not built)`);
    if (differ.length) {
      console.error(`the shipped dashboard differs from what its sources build: ${differ.join(", ")}`);
      console.error(`rebuild it: (cd clients/js && npm run build)`);
      process.exit(1);
    }
    console.log(`the shipped dashboard is what ${relative(repository, here)} builds`);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
} else {
  const manifest = await build(shipped);
  for (const [name, o] of Object.entries(manifest.outputs)) {
    console.log(`${name}: ${o.bytes.toLocaleString("en")} bytes, ${o.gzipped.toLocaleString("en")} gzipped`);
  }
}
