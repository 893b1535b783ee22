// The service's image path (plantdx/images.py) in the browser, up to the centre crop the edge model takes.
// Pure functions over pixel arrays: the same file runs in the page and, for the tests, in Node against Pillow.
//
// decode (the browser) -> transparency over the card grey -> JPEG DCT-scale emulation -> Pillow's resampling
// filter, ported to the bit -> centre crop. Everything after the crop is inside the edge ONNX graph.

// The median border colour of 400 training photos (images.BACKGROUND): a cut-out leaf is laid over it.
export const BACKGROUND = [148, 138, 144];

// Python's round(): exact halves go to the even neighbour (resize_shorter rounds the new size with it).
export function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// RGBA (a canvas's ImageData, not premultiplied) -> RGB, each pixel laid over BACKGROUND as Pillow's paste with an
// alpha mask blends it: (bg * (255 - a) + c * a + 128) / 255, with Pillow's division by 255.
export function composite(rgba, width, height, background = BACKGROUND) {
  const n = width * height;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = rgba[i * 4 + 3];
    for (let c = 0; c < 3; c++) {
      const v = rgba[i * 4 + c];
      if (a === 255) {
        out[i * 3 + c] = v;
      } else {
        const t = background[c] * (255 - a) + v * a + 128;
        out[i * 3 + c] = ((t >> 8) + t) >> 8;
      }
    }
  }
  return out;
}

// Pillow's JPEG draft (JpegImagePlugin.draft): the largest of 8, 4, 2, 1 that keeps both sides at least minSide.
export function draftScale(width, height, minSide) {
  const scale = Math.min(Math.floor(width / minSide), Math.floor(height / minSide));
  for (const s of [8, 4, 2]) if (scale >= s) return s;
  return 1;
}

// libjpeg decodes a JPEG at 1/s of its size from the DCT blocks: close to the mean of each s x s block (exact for the
// DC at 1/8, up to chroma upsampling and rounding). The browser decodes at full size; this averages it down the same
// way, so a phone photo reaches the resize about as the service saw it (the README gives the measured difference).
export function dctReduce(rgb, width, height, s) {
  if (s === 1) return { data: rgb, width, height };
  const w = Math.ceil(width / s);
  const h = Math.ceil(height / s);
  const out = new Uint8Array(w * h * 3);
  for (let by = 0; by < h; by++) {
    const y0 = by * s;
    const y1 = Math.min(y0 + s, height);
    for (let bx = 0; bx < w; bx++) {
      const x0 = bx * s;
      const x1 = Math.min(x0 + s, width);
      let r = 0;
      let g = 0;
      let b = 0;
      for (let y = y0; y < y1; y++) {
        let p = (y * width + x0) * 3;
        for (let x = x0; x < x1; x++, p += 3) {
          r += rgb[p];
          g += rgb[p + 1];
          b += rgb[p + 2];
        }
      }
      const count = (y1 - y0) * (x1 - x0);
      const o = (by * w + bx) * 3;
      out[o] = Math.round(r / count);
      out[o + 1] = Math.round(g / count);
      out[o + 2] = Math.round(b / count);
    }
  }
  return { data: out, width: w, height: h };
}

// ---- Pillow's resampling (src/libImaging/Resample.c), 8 bits per channel ----

const FILTERS = {
  bilinear: {
    support: 1.0,
    f(x) {
      if (x < 0.0) x = -x;
      return x < 1.0 ? 1.0 - x : 0.0;
    },
  },
  area: {
    support: 0.5,
    f(x) {
      return x > -0.5 && x <= 0.5 ? 1.0 : 0.0;
    },
  },
  bicubic: {
    support: 2.0,
    f(x) {
      const a = -0.5;
      if (x < 0.0) x = -x;
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
};
const PRECISION_BITS = 32 - 8 - 2;

// precompute_coeffs + normalize_coeffs_8bpc: per output pixel, the first input pixel, how many, and the fixed-point
// weights. Doubles in the same order of operations as the C code, so every weight rounds to the same integer.
function coefficients(inSize, outSize, filter) {
  let filterscale = inSize / outSize;
  const scale = filterscale;
  if (filterscale < 1.0) filterscale = 1.0;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const pre = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let ww = 0.0;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const w = filter.f((x + xmin - center + 0.5) * ss);
      pre[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? pre[x] / ww : pre[x];
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v) {
  const s = v >> PRECISION_BITS;
  return s < 0 ? 0 : s > 255 ? 255 : s;
}

function horizontalPass(src, width, height, outW, filter) {
  const { ksize, bounds, kk } = coefficients(width, outW, filter);
  const half = 1 << (PRECISION_BITS - 1);
  const out = new Uint8Array(outW * height * 3);
  for (let y = 0; y < height; y++) {
    const row = y * width * 3;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2];
      const n = bounds[xx * 2 + 1];
      const k = xx * ksize;
      let s0 = half;
      let s1 = half;
      let s2 = half;
      for (let x = 0; x < n; x++) {
        const p = row + (xmin + x) * 3;
        const c = kk[k + x];
        s0 += src[p] * c;
        s1 += src[p + 1] * c;
        s2 += src[p + 2] * c;
      }
      const o = (y * outW + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return out;
}

function verticalPass(src, width, height, outH, filter) {
  const { ksize, bounds, kk } = coefficients(height, outH, filter);
  const half = 1 << (PRECISION_BITS - 1);
  const out = new Uint8Array(width * outH * 3);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2];
    const n = bounds[yy * 2 + 1];
    const k = yy * ksize;
    for (let xx = 0; xx < width; xx++) {
      let s0 = half;
      let s1 = half;
      let s2 = half;
      for (let y = 0; y < n; y++) {
        const p = ((ymin + y) * width + xx) * 3;
        const c = kk[k + y];
        s0 += src[p] * c;
        s1 += src[p + 1] * c;
        s2 += src[p + 2] * c;
      }
      const o = (yy * width + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return out;
}

// Which pass Pillow 13 runs first (each pass rounds to 8 bits, so the order shows in the pixels). Found by
// measurement, not from its source: exact on every proportional resize tried (resize_for_model's shorter-side rule:
// vertical first when the photo is more than twice as tall as wide), and on 393 of 399 random other ones.
function verticalFirst(width, height, outW, outH) {
  if (outW < width && outH < height) return height * height * outW > 2 * width * width * outH;
  if (outW >= width && outH >= height) return false;
  return outH < height;
}

// Image.resize(size, filter) of an RGB image: two one-axis passes, each rounded to 8 bits.
export function resample(rgb, width, height, outW, outH, interpolation = "bilinear") {
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error("unsupported interpolation " + interpolation);
  if (outW === width && outH === height) return rgb.slice();
  if (outW === width) return verticalPass(rgb, width, height, outH, filter);
  if (outH === height) return horizontalPass(rgb, width, height, outW, filter);
  if (verticalFirst(width, height, outW, outH)) {
    return horizontalPass(verticalPass(rgb, width, height, outH, filter), width, outH, outW, filter);
  }
  return verticalPass(horizontalPass(rgb, width, height, outW, filter), outW, height, outH, filter);
}

// images.resize_for_model: the shorter side to `resize` (the longer one rounded as Python rounds), or, when
// resize == crop, a plain resize to crop x crop.
export function resizeForModel(rgb, width, height, spec) {
  const resize = Number(spec.resize);
  const crop = Number(spec.crop);
  const how = String(spec.interpolation || "bilinear");
  if (resize === crop) {
    return { data: resample(rgb, width, height, crop, crop, how), width: crop, height: crop };
  }
  const scale = resize / Math.min(width, height);
  const w = Math.max(resize, pyRound(width * scale));
  const h = Math.max(resize, pyRound(height * scale));
  return { data: resample(rgb, width, height, w, h, how), width: w, height: h };
}

// images.center_crop: offsets (dim - size) // 2.
export function centerCrop(rgb, width, height, size) {
  const top = Math.floor((height - size) / 2);
  const left = Math.floor((width - size) / 2);
  const out = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    const from = ((top + y) * width + left) * 3;
    out.set(rgb.subarray(from, from + size * 3), y * size * 3);
  }
  return out;
}

// Decoded RGBA pixels -> the edge model's input: the centre crop as HWC uint8. `jpeg` says whether the file was a
// JPEG (the service decodes those at a reduced DCT scale when they are large).
export function modelPixels(rgba, width, height, spec, jpeg) {
  let img = { data: composite(rgba, width, height), width, height };
  if (jpeg) img = dctReduce(img.data, width, height, draftScale(width, height, Number(spec.resize)));
  const resized = resizeForModel(img.data, img.width, img.height, spec);
  return centerCrop(resized.data, resized.width, resized.height, Number(spec.crop));
}
