// Vendors the page's browser libraries from node_modules (installed by `npm ci` from package-lock.json) into the
// package's static files, with gzip and brotli copies the service sends to browsers that accept them. Never a CDN:
// the page must work with no network once cached, and the bytes it runs are the ones the lock file names.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const ort = join(root, "node_modules", "onnxruntime-web");
const out = join(root, "src", "plantdx", "serve", "static", "vendor", "onnxruntime-web");
// The WASM-only build: the ES module, its Emscripten glue and the SIMD binary (single-threaded without
// cross-origin isolation, which the page does not ask for: COOP/COEP break iOS).
const FILES = ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"];

const pkg = JSON.parse(readFileSync(join(ort, "package.json"), "utf8"));
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const files = {};
for (const name of FILES) {
  const body = readFileSync(join(ort, "dist", name));
  copyFileSync(join(ort, "dist", name), join(out, name));
  writeFileSync(join(out, name + ".gz"), gzipSync(body, { level: 9 }));
  const br = brotliCompressSync(body, {
    params: { [constants.BROTLI_PARAM_QUALITY]: 9, [constants.BROTLI_PARAM_SIZE_HINT]: body.length },
  });
  writeFileSync(join(out, name + ".br"), br);
  files[name] = { bytes: body.length, sha256: createHash("sha256").update(body).digest("hex") };
}
// The package ships no LICENSE file; its package.json names the licence.
const about = { package: "onnxruntime-web", version: pkg.version, license: pkg.license, homepage: pkg.homepage, files };
writeFileSync(join(out, "version.json"), JSON.stringify(about, null, 2) + "\n");
console.log(`onnxruntime-web ${pkg.version} (${pkg.license}) -> ${out}`);
