// Offline diagnosis on the phone: the served model's edge ONNX graph (plantdx/edge.py) run by onnxruntime-web
// (WASM, one thread), kept in IndexedDB, updated from /v1/model when online, and a queue of feedback given offline.
//
// The graph takes the centre crop as uint8 pixels and returns the calibrated probabilities, the answer and the
// reason to abstain, so this file only decodes, resizes (preprocess.mjs, Pillow's filter) and words the answer as
// the service does (plantdx/inference.py: Predictor._reason).
import { modelPixels } from "./preprocess.mjs";

const ORT = "/static/vendor/onnxruntime-web/";
const DB_NAME = "plantdx";
const MAX_PIXELS = 50e6; // a decoded photo this large would take hundreds of MB in a phone's browser
const TOP_K = 3;

// ---- IndexedDB: models (the one in use), meta (when /v1/model was last checked), outbox (feedback to send) ----

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => {
      const db = req.result;
      db.createObjectStore("models", { keyPath: "slot" });
      db.createObjectStore("meta", { keyPath: "key" });
      db.createObjectStore("outbox", { keyPath: "id", autoIncrement: true });
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function tx(db, store, mode, work) {
  return new Promise((resolve, reject) => {
    const t = db.transaction(store, mode);
    const result = work(t.objectStore(store));
    t.oncomplete = () => resolve(result && "result" in result ? result.result : undefined);
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error || new Error("IndexedDB transaction aborted"));
  });
}

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

export class DigestError extends Error {}
export class NotAPhotoError extends Error {}

// ---- the photo -> pixels, as the service decodes it (images.load_rgb) ----

function sniff(bytes) {
  const b = new Uint8Array(bytes, 0, Math.min(12, bytes.byteLength));
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "jpeg";
  if (b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return "png";
  const text = String.fromCharCode(...b);
  if (text.slice(0, 4) === "RIFF" && text.slice(8, 12) === "WEBP") return "webp";
  return null;
}

export async function decodePhoto(file) {
  const bytes = await file.arrayBuffer();
  const format = sniff(bytes);
  if (!format) {
    throw new NotAPhotoError("This file is not a photo this page can read: choose a JPEG, PNG or WebP photo.");
  }
  let bitmap;
  try {
    // EXIF orientation applied; no colour management and no premultiplied alpha: Pillow does neither
    bitmap = await createImageBitmap(new Blob([bytes]), {
      imageOrientation: "from-image",
      premultiplyAlpha: "none",
      colorSpaceConversion: "none",
    });
  } catch (e) {
    throw new NotAPhotoError("This photo could not be read (the file may be damaged): try another photo.");
  }
  const { width, height } = bitmap;
  if (width * height > MAX_PIXELS) {
    bitmap.close();
    throw new NotAPhotoError("This photo is too large to check on the phone: use a smaller photo.");
  }
  const canvas =
    typeof OffscreenCanvas === "function" ? new OffscreenCanvas(width, height) : document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { rgba: ctx.getImageData(0, 0, width, height).data, width, height, jpeg: format === "jpeg" };
}

// ---- the answer, worded as the service words it ----

function fixed(v, digits) {
  return Number(v).toFixed(digits);
}

export function reasonText(code, out, thresholds) {
  switch (code) {
    case 0:
      return null;
    case 1:
      return (
        `the photo is almost uniform (contrast ${fixed(out.contrast, 3)}, under ${fixed(thresholds[0], 3)}, ` +
        "a quarter of the flattest reference leaf's): too dark, overexposed or blank"
      );
    case 2:
      return `this does not look like a leaf (probability ${fixed(out.notLeaf, 2)} that it is not one)`;
    case 3:
      return (
        "this does not look like the leaves the model was trained on " +
        `(out-of-distribution score ${fixed(out.ood, 0)} > ${fixed(thresholds[2], 0)})`
      );
    default:
      return `confidence ${fixed(out.confidence, 2)} is below the abstain threshold ${fixed(thresholds[3], 2)}`;
  }
}

// ---- the engine ----

export class EdgeEngine {
  constructor() {
    this.ort = null;
    this.db = null;
    this.model = null; // {sha256, version, name, architecture, classes, preprocess, reject, weights, installed_at}
    this.session = null;
    this.checkedAt = null;
    this.lastError = null;
  }

  get ready() {
    return this.session !== null;
  }

  async runtime() {
    if (!this.ort) {
      const ort = await import(ORT + "ort.wasm.min.mjs");
      ort.env.wasm.wasmPaths = ORT;
      ort.env.wasm.numThreads = 1; // no cross-origin isolation: it would break the page on iOS
      ort.env.wasm.proxy = false;
      this.ort = ort;
    }
    return this.ort;
  }

  async session_(bytes) {
    const ort = await this.runtime();
    return ort.InferenceSession.create(new Uint8Array(bytes), {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
  }

  // The model kept from an earlier visit, ready before any network is tried.
  async start() {
    this.db = await openDb();
    const meta = await tx(this.db, "meta", "readonly", (s) => s.get("checked_at"));
    this.checkedAt = meta ? meta.value : null;
    const kept = await tx(this.db, "models", "readonly", (s) => s.get("current"));
    if (kept) {
      try {
        this.session = await this.session_(kept.bytes);
        this.model = { ...kept, bytes: undefined };
      } catch (e) {
        // a kept model this runtime cannot open (storage damaged, or a runtime update): fetch it again
        await tx(this.db, "models", "readwrite", (s) => s.delete("current"));
      }
    }
    return this.model;
  }

  // Ask the service which model it serves; download a new one in the background, check its sha256 against the
  // name it was announced under, and only then swap (the old model answers until the new one is ready).
  async update(fetchJson) {
    const info = await fetchJson("/v1/model");
    this.checkedAt = Date.now();
    await tx(this.db, "meta", "readwrite", (s) => s.put({ key: "checked_at", value: this.checkedAt }));
    if (!info || !info.edge) return { changed: false, available: false };
    const edge = info.edge;
    if (this.model && this.model.sha256 === edge.sha256) return { changed: false, available: true };
    const response = await fetch(edge.url);
    if (!response.ok) throw new Error(`the model download failed (HTTP ${response.status})`);
    const bytes = await response.arrayBuffer();
    const digest = await sha256Hex(bytes);
    if (digest !== edge.sha256) {
      throw new DigestError(
        `the downloaded model does not match its sha256 (${digest.slice(0, 12)}…, expected ` +
          `${edge.sha256.slice(0, 12)}…): it was refused and the model in use is kept`
      );
    }
    const session = await this.session_(bytes);
    const record = {
      slot: "current",
      sha256: edge.sha256,
      weights: edge.weights || null,
      version: String(info.version),
      name: info.name,
      architecture: info.architecture,
      classes: info.classes,
      preprocess: info.preprocess,
      reject: info.reject_label || null,
      installed_at: Date.now(),
      bytes,
    };
    await tx(this.db, "models", "readwrite", (s) => s.put(record));
    const previous = this.session;
    this.session = session;
    this.model = { ...record, bytes: undefined };
    if (previous && previous.release) previous.release().catch(() => {});
    return { changed: true, available: true };
  }

  // One photo -> an answer shaped like the service's Prediction (no request_id, no heat map).
  async diagnose(file) {
    if (!this.session) throw new Error("no model on this phone yet: open the page once with a connection");
    const started = performance.now();
    const photo = await decodePhoto(file);
    const pixels = modelPixels(photo.rgba, photo.width, photo.height, this.model.preprocess, photo.jpeg);
    const answer = await this.run(pixels);
    answer.total_time_ms = performance.now() - started;
    return answer;
  }

  // The edge graph on one centre crop (HWC uint8).
  async run(pixels) {
    const ort = this.ort;
    const crop = Number(this.model.preprocess.crop);
    const t0 = performance.now();
    const out = await this.session.run({ pixels: new ort.Tensor("uint8", pixels, [1, crop, crop, 3]) });
    const elapsed = performance.now() - t0;
    const classes = this.model.classes;
    const probs = Array.from(out.probabilities.data);
    const label = Number(out.label.data[0]);
    const scores = {
      confidence: out.confidence.data[0],
      notLeaf: out.not_leaf.data[0],
      ood: out.ood_score.data[0],
      contrast: out.contrast.data[0],
    };
    const thresholds = Array.from(out.thresholds.data);
    const code = Number(out.reason.data[0]);
    const probabilities = {};
    classes.forEach((c, i) => (probabilities[c] = probs[i]));
    const top = classes
      .map((c, i) => ({ label: c, probability: probs[i] }))
      .filter((x) => x.label !== this.model.reject)
      .sort((a, b) => b.probability - a.probability)
      .slice(0, TOP_K);
    return {
      prediction: classes[label],
      confidence: scores.confidence,
      probabilities,
      top_k: top,
      abstained: code !== 0,
      reason: reasonText(code, scores, thresholds),
      reason_code: code,
      ood_score: scores.ood,
      inference_time_ms: elapsed,
      model_version: this.model.version,
      request_id: null,
      heatmap: null,
      local: true,
    };
  }
}

// ---- feedback given offline: kept until the service has it ----

export class Outbox {
  constructor(db) {
    this.db = db;
    this.flushing = null;
  }

  add(item) {
    return tx(this.db, "outbox", "readwrite", (s) => s.add({ ...item, created_at: Date.now() }));
  }

  count() {
    return tx(this.db, "outbox", "readonly", (s) => s.count());
  }

  // Send what is queued, oldest first. A photo diagnosed offline is first sent for a served answer (so the log
  // has it and it can be trained on), then labelled; an item leaves the queue only once the service accepted it,
  // or refused it for good (4xx other than 408/429: retrying would not help).
  flush() {
    if (!this.flushing) {
      this.flushing = this._flush().finally(() => {
        this.flushing = null;
      });
    }
    return this.flushing;
  }

  async _flush() {
    const items = await tx(this.db, "outbox", "readonly", (s) => s.getAll());
    let sent = 0;
    for (const item of items) {
      let requestId = item.request_id;
      if (!requestId) {
        const form = new FormData();
        form.append("file", item.photo, item.photo_name || "leaf.jpg");
        const r = await fetch("/v1/predict", {
          method: "POST",
          body: form,
          headers: { Accept: "application/json", "X-Request-ID": item.local_id },
        });
        if (!r.ok) {
          if (permanent(r.status)) await this.drop(item.id);
          if (permanent(r.status)) continue;
          break;
        }
        requestId = (await r.json()).request_id;
        // keep what was learnt: a retry of the label must not send the photo a second time
        await tx(this.db, "outbox", "readwrite", (s) =>
          s.put({ ...item, request_id: requestId, photo: null, served_at: Date.now() })
        );
      }
      const r = await fetch("/v1/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ request_id: requestId, label: item.label }),
      });
      if (r.ok || permanent(r.status)) {
        await this.drop(item.id);
        if (r.ok) sent += 1;
      } else {
        break;
      }
    }
    return sent;
  }

  drop(id) {
    return tx(this.db, "outbox", "readwrite", (s) => s.delete(id));
  }
}

function permanent(status) {
  return status >= 400 && status < 500 && status !== 408 && status !== 429;
}
