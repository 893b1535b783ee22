// CPU time of one diagnosis by the edge model in onnxruntime-web's WASM backend (one thread), measured in Node:
// the same V8 WebAssembly engine as Chromium, timed with process.cpuUsage() so that other work on the machine does
// not inflate it as it does the wall-clock figures of benchmarks/edge.py. An estimate of the quiet-machine latency,
// not a replacement for it.   node benchmarks/edge_wasm_cpu.mjs MODEL.edge.onnx [CROP] [RUNS]
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const [, , modelPath, cropArg, runsArg] = process.argv;
const crop = Number(cropArg || 160);
const runs = Number(runsArg || 30);
const require = createRequire(import.meta.url);
const ort = require("onnxruntime-web");
ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(readFileSync(modelPath), { graphOptimizationLevel: "all" });
const pixels = new Uint8Array(crop * crop * 3).map((_, i) => (i * 2654435761) >>> 24);
const feed = { pixels: new ort.Tensor("uint8", pixels, [1, crop, crop, 3]) };
for (let i = 0; i < 5; i++) await session.run(feed);
const cpu = [];
const wall = [];
for (let i = 0; i < runs; i++) {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await session.run(feed);
  wall.push(performance.now() - t0);
  const c = process.cpuUsage(c0);
  cpu.push((c.user + c.system) / 1000);
}
const p50 = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(JSON.stringify({ model: modelPath, crop, runs, cpu_p50_ms: p50(cpu), wall_p50_ms: p50(wall) }));
