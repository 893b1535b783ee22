// Runs the page's preprocessing (static/edge/preprocess.mjs) on cases written by test_edge_preprocess.py:
// node edge_preprocess.mjs MODULE CASES_DIR. Each case is NAME.json (what to do) + NAME.in (raw pixels); the answer
// goes to NAME.out (raw pixels) for the test to compare with Pillow byte for byte.
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [, , modulePath, dir] = process.argv;
const pre = await import(pathToFileURL(modulePath).href);
for (const name of readdirSync(dir).filter((f) => f.endsWith(".json"))) {
  const c = JSON.parse(readFileSync(join(dir, name), "utf8"));
  const stem = join(dir, name.slice(0, -5));
  const px = new Uint8Array(readFileSync(stem + ".in"));
  let out;
  if (c.op === "resample") out = pre.resample(px, c.width, c.height, c.out_width, c.out_height, c.interpolation);
  else if (c.op === "composite") out = pre.composite(px, c.width, c.height);
  else if (c.op === "model_pixels") out = pre.modelPixels(px, c.width, c.height, c.spec, c.jpeg);
  else if (c.op === "round") out = new Uint8Array(c.values.map((v) => pre.pyRound(v) & 255));
  else throw new Error("unknown op " + c.op);
  writeFileSync(stem + ".out", out);
}
