/* plantdx grower page. Plain JS, no framework, no inline code (strict CSP). */
(function () {
  "use strict";

  // Registry versions are numbers ("v3"); a bundle served from a folder is named by its hash ("bundle-1a2b3c4d").
  function versionLabel(v) {
    var text = String(v);
    return /^[0-9]+$/.test(text) ? "v" + text : text;
  }


  var PREDICT_URL = "/v1/predict?explain=true";
  var ADVICE_URL = "/v1/advice";
  var MODEL_URL = "/v1/model";
  var ACCEPTED_TYPES = ["image/jpeg", "image/png", "image/webp"];
  var REQUEST_TIMEOUT_MS = 60000;
  // The model sees a centre crop: the photo's shorter side is resized to `resize`, then a square of
  // `input_size` is cut from the middle (default resize = input_size * 256 / 224). A square heat map
  // therefore covers only that central square, so the photo is zoomed to match it.
  var cropZoom = 256 / 224;
  // A bundle with resize == crop squashes the whole photo to a square instead (preprocess.json's rule).
  var squashes = false;

  var el = {};
  var advice = null; // {classes: {...}} once loaded
  var adviceReady = null; // Promise
  var previewUrl = null;
  var busy = false;

  function $(id) {
    return document.getElementById(id);
  }

  function show(node, visible) {
    if (node) node.hidden = !visible;
  }

  function clear(node) {
    while (node && node.firstChild) node.removeChild(node.firstChild);
  }

  function make(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  /* ---------- labels ---------- */

  function splitLabel(label) {
    var parts = String(label || "").split("___");
    var crop = (parts[0] || "").replace(/[_,]+/g, " ").replace(/\s+/g, " ").trim();
    var name = (parts.length > 1 ? parts.slice(1).join(" ") : "").replace(/_+/g, " ").replace(/\s+/g, " ").trim();
    var healthy = name.toLowerCase() === "healthy";
    if (!name) name = crop;
    return { crop: crop || "Unknown plant", name: name, healthy: healthy };
  }

  function adviceFor(label) {
    if (advice && advice.classes && Object.prototype.hasOwnProperty.call(advice.classes, label)) {
      return advice.classes[label];
    }
    return null;
  }

  function describe(label) {
    var info = adviceFor(label);
    var fallback = splitLabel(label);
    var crop = info && info.crop ? info.crop : fallback.crop;
    var name = info && info.name ? info.name : fallback.name;
    var healthy = info && typeof info.healthy === "boolean" ? info.healthy : fallback.healthy;
    return {
      crop: crop,
      name: name,
      healthy: healthy,
      text: crop + " \u2014 " + (healthy ? "looks healthy" : name),
    };
  }

  function percent(p) {
    var v = Number(p);
    if (!isFinite(v)) return "?";
    v = Math.max(0, Math.min(1, v)) * 100;
    if (v > 0 && v < 1) return "<1%";
    if (v > 99 && v < 100) return ">99%";
    return Math.round(v) + "%";
  }

  /* ---------- status / errors ---------- */

  function setStatus(text) {
    el.status.textContent = text || "";
  }

  function showError(message) {
    el.error.textContent = message;
    show(el.error, true);
  }

  function clearError() {
    el.error.textContent = "";
    show(el.error, false);
  }

  function setBusy(on) {
    busy = on;
    el.form.classList.toggle("is-busy", on);
    el.diagnose.setAttribute("aria-busy", on ? "true" : "false");
    el.diagnoseLabel.textContent = on ? "Checking the leaf\u2026" : "Diagnose";
    el.diagnose.disabled = on || !currentFile();
    el.photo.disabled = on;
    setStatus(on ? "Checking the leaf. This usually takes a few seconds." : "");
  }

  function currentFile() {
    return el.photo.files && el.photo.files.length ? el.photo.files[0] : null;
  }

  /* ---------- photo selection ---------- */

  function resetResult() {
    show(el.result, false);
    show(el.notSure, false);
    el.result.classList.remove("is-unsure", "is-healthy");
    el.diagnosis.textContent = "";
    el.confidence.textContent = "";
    el.confidenceBar.style.width = "0%";
    clear(el.top3);
    clear(el.advice);
    show(el.heatmapSection, false);
    el.heatmapOverlay.removeAttribute("src");
    el.heatmapPhoto.removeAttribute("src");
    el.resultMeta.textContent = "";
  }

  function onPhotoChange() {
    clearError();
    resetResult();
    if (previewUrl) {
      URL.revokeObjectURL(previewUrl);
      previewUrl = null;
    }
    var file = currentFile();
    if (!file) {
      show(el.previewBox, false);
      el.preview.removeAttribute("src");
      el.diagnose.disabled = true;
      return;
    }
    if (file.type && ACCEPTED_TYPES.indexOf(file.type) === -1) {
      show(el.previewBox, false);
      el.diagnose.disabled = true;
      showError("This file type is not supported. Please choose a JPEG, PNG or WebP photo.");
      return;
    }
    previewUrl = URL.createObjectURL(file);
    el.preview.src = previewUrl;
    show(el.previewBox, true);
    el.diagnose.disabled = busy;
    setStatus("Photo ready. Press Diagnose.");
  }

  /* ---------- prediction ---------- */

  function errorMessageFor(response, body) {
    var msg = body && body.error && body.error.message ? String(body.error.message) : "";
    if (response.status === 429) {
      var retry = response.headers.get("Retry-After");
      var wait = retry && /^\d+$/.test(retry.trim()) ? " Please wait " + retry.trim() + " seconds and try again." : " Please wait a moment and try again.";
      return (msg || "Too many requests.") + wait;
    }
    if (msg) return msg;
    if (response.status === 413) return "The photo is too large. Please use a smaller photo.";
    if (response.status === 415) return "This file type is not supported. Please choose a JPEG, PNG or WebP photo.";
    if (response.status >= 500) return "The server had a problem checking this photo. Please try again later.";
    return "The photo could not be checked (error " + response.status + "). Please try another photo.";
  }

  function diagnose(event) {
    if (event) event.preventDefault();
    var file = currentFile();
    if (!file || busy) return;
    clearError();
    resetResult();
    setBusy(true);

    var form = new FormData();
    form.append("file", file, file.name || "leaf.jpg");

    var controller = typeof AbortController === "function" ? new AbortController() : null;
    var timer = controller
      ? setTimeout(function () {
          controller.abort();
        }, REQUEST_TIMEOUT_MS)
      : null;

    var responseRef = null;
    fetch(PREDICT_URL, {
      method: "POST",
      body: form,
      headers: { Accept: "application/json" },
      signal: controller ? controller.signal : undefined,
    })
      .then(function (response) {
        responseRef = response;
        return response.text().then(function (text) {
          var body = null;
          try {
            body = text ? JSON.parse(text) : null;
          } catch (e) {
            body = null;
          }
          return { response: response, body: body };
        });
      })
      .then(function (r) {
        if (!r.response.ok) throw new Error(errorMessageFor(r.response, r.body));
        if (!r.body || typeof r.body.prediction !== "string") {
          throw new Error("The server sent an answer this page could not read. Please try again.");
        }
        // Make sure advice is loaded (or has failed) before rendering names.
        return adviceReady.then(function () {
          renderResult(r.body);
        });
      })
      .catch(function (err) {
        if (err && err.name === "AbortError") {
          showError("Checking the photo took too long. Please check your connection and try again.");
        } else if (!responseRef) {
          showError("Could not reach the server. Please check your connection and try again.");
        } else {
          showError(err && err.message ? err.message : "Something went wrong. Please try again.");
        }
        setStatus("");
      })
      .then(function () {
        if (timer) clearTimeout(timer);
        setBusy(false);
        if (!el.result.hidden) setStatus("Result ready.");
      });
  }

  function renderResult(p) {
    var abstained = !!p.abstained;
    var main = describe(p.prediction);
    var conf = Number(p.confidence);

    el.result.classList.toggle("is-unsure", abstained);
    el.result.classList.toggle("is-healthy", !abstained && main.healthy);
    show(el.notSure, abstained);

    el.diagnosisLabel.textContent = abstained ? "Best guess (not certain)" : "Diagnosis";
    el.diagnosis.textContent = abstained ? "Guess: " + main.text : main.text;

    var info = adviceFor(p.prediction);
    if (info && info.pathogen && !main.healthy) {
      el.pathogen.textContent = "Cause: " + info.pathogen;
      show(el.pathogen, true);
    } else {
      el.pathogen.textContent = "";
      show(el.pathogen, false);
    }

    el.confidenceCaption.textContent = abstained ? "Confidence (too low to be sure)" : "Confidence";
    el.confidence.textContent = percent(conf);
    el.confidenceBar.style.width = (isFinite(conf) ? Math.max(0, Math.min(1, conf)) * 100 : 0).toFixed(1) + "%";

    renderTop3(p);
    renderHeatmap(p.heatmap);
    renderAdvice(p.prediction, main, abstained);

    var meta = [];
    if (isFinite(Number(p.inference_time_ms))) meta.push("Checked in " + Math.round(Number(p.inference_time_ms)) + " ms");
    if (p.model_version) meta.push("model " + versionLabel(p.model_version));
    if (p.request_id) meta.push("reference " + p.request_id);
    el.resultMeta.textContent = meta.join(" \u00b7 ");

    show(el.result, true);
    if (el.result.scrollIntoView) {
      try {
        el.result.scrollIntoView({ behavior: "smooth", block: "start" });
      } catch (e) {
        el.result.scrollIntoView();
      }
    }
  }

  function renderTop3(p) {
    clear(el.top3);
    var items = Array.isArray(p.top_k) ? p.top_k.slice() : [];
    if (!items.length && p.probabilities && typeof p.probabilities === "object") {
      items = Object.keys(p.probabilities).map(function (k) {
        return { label: k, probability: p.probabilities[k] };
      });
    }
    items = items
      .map(function (it) {
        // Accept {label, probability} objects or [label, probability] pairs.
        if (Array.isArray(it)) return { label: it[0], probability: it[1] };
        return it;
      })
      .filter(function (it) {
        return it && typeof it.label === "string";
      })
      .sort(function (a, b) {
        return Number(b.probability) - Number(a.probability);
      })
      .slice(0, 3);
    items.forEach(function (it) {
      var li = make("li");
      li.appendChild(make("span", describe(it.label).text, "top3-name"));
      li.appendChild(make("span", percent(it.probability), "top3-pct"));
      el.top3.appendChild(li);
    });
  }

  function renderHeatmap(heatmap) {
    if (!heatmap || typeof heatmap !== "string" || !previewUrl) {
      show(el.heatmapSection, false);
      return;
    }
    var src = heatmap.indexOf("data:") === 0 ? heatmap : "data:image/png;base64," + heatmap;
    el.heatmapOverlay.onload = function () {
      fitHeatmap(el.heatmapOverlay.naturalWidth, el.heatmapOverlay.naturalHeight);
    };
    fitHeatmap(1, 1);
    el.heatmapPhoto.src = previewUrl;
    el.heatmapOverlay.src = src;
    el.heatmapOverlay.hidden = !el.heatmapToggle.checked;
    show(el.heatmapSection, true);
  }

  // Square heat map = the model's centre crop: show the same crop of the photo under it.
  // Any other shape: assume it spans the whole photo and stretch it over the photo box.
  function fitHeatmap(w, h) {
    var square = w > 0 && h > 0 && Math.abs(w / h - 1) < 0.02;
    el.heatmapStack.style.aspectRatio = w > 0 && h > 0 ? w + " / " + h : "1 / 1";
    el.heatmapPhoto.style.objectFit = squashes ? "fill" : "cover";
    el.heatmapPhoto.style.transform = square && !squashes ? "scale(" + cropZoom.toFixed(4) + ")" : "none";
  }

  function renderAdvice(label, main, abstained) {
    clear(el.advice);
    var info = adviceFor(label);
    var container = el.advice;

    if (abstained) {
      var details = make("details", null, "guess-details");
      details.appendChild(make("summary", "About the best guess: " + main.text));
      el.advice.appendChild(details);
      container = details;
    }

    if (!info) {
      container.appendChild(
        make(
          "p",
          "No advice is available for this result. For help, contact your local extension service or a plant diagnostic lab.",
          "advice-missing"
        )
      );
      return;
    }

    container.appendChild(make("h3", main.healthy ? "About this leaf" : "What it is", "sub-title"));
    container.appendChild(make("p", info.description, "advice-text"));

    if (Array.isArray(info.what_to_do) && info.what_to_do.length) {
      container.appendChild(make("h3", main.healthy ? "Keep it healthy" : "What to do", "sub-title"));
      var ul = make("ul", null, "todo-list");
      info.what_to_do.forEach(function (step) {
        ul.appendChild(make("li", step));
      });
      container.appendChild(ul);
    }

    if (Array.isArray(info.sources) && info.sources.length) {
      container.appendChild(make("h3", "Learn more", "sub-title"));
      var sl = make("ul", null, "source-list");
      info.sources.forEach(function (s) {
        if (!s || !s.url || !/^https?:\/\//i.test(s.url)) return;
        var li = make("li");
        var a = make("a", s.name || s.url);
        a.href = s.url;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        li.appendChild(a);
        sl.appendChild(li);
      });
      container.appendChild(sl);
    }

    if (advice && advice._about) {
      container.appendChild(make("p", advice._about, "advice-about"));
    }
  }

  /* ---------- advice + model info ---------- */

  function getJSON(url) {
    return fetch(url, { headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }

  function loadAdvice() {
    adviceReady = getJSON(ADVICE_URL)
      .then(function (data) {
        if (data && data.classes && typeof data.classes === "object") advice = data;
      })
      .catch(function () {
        advice = null; // fall back to names derived from class labels
      });
    return adviceReady;
  }

  function loadModelInfo() {
    getJSON(MODEL_URL)
      .then(function (m) {
        var classes = Array.isArray(m && m.classes) ? m.classes : [];
        var crops = [];
        classes.forEach(function (c) {
          var crop = splitLabel(c).crop.split(" ")[0].toLowerCase();
          if (crop && crops.indexOf(crop) === -1) crops.push(crop);
        });
        crops.sort();
        var size = Number(m && m.input_size);
        var resize = Number(m && (m.resize || (m.preprocess && m.preprocess.resize)));
        if (size > 0 && resize >= size) cropZoom = resize / size;
        squashes = size > 0 && resize === size;
        var parts = ["Model"];
        if (m && m.architecture) parts.push(String(m.architecture));
        if (m && m.version !== undefined && m.version !== null) parts.push(versionLabel(m.version));
        var line = parts.join(" ");
        if (classes.length) {
          line += ", knows " + classes.length + " leaf conditions" + (crops.length ? " of " + crops.join(", ") : "");
        }
        el.modelInfo.textContent = line + ".";
      })
      .catch(function () {
        el.modelInfo.textContent = "Model information is not available right now.";
      });
  }

  /* ---------- wiring ---------- */

  function init() {
    el.form = $("upload-form");
    el.photo = $("photo");
    el.preview = $("preview");
    el.previewBox = $("preview-box");
    el.diagnose = $("diagnose");
    el.diagnoseLabel = $("diagnose-label");
    el.status = $("status");
    el.error = $("error");
    el.result = $("result");
    el.notSure = $("not-sure");
    el.diagnosisLabel = $("diagnosis-label");
    el.diagnosis = $("diagnosis");
    el.pathogen = $("pathogen");
    el.confidence = $("confidence");
    el.confidenceCaption = $("confidence-caption");
    el.confidenceBar = $("confidence-bar");
    el.top3 = $("top3");
    el.heatmapSection = $("heatmap-section");
    el.heatmapPhoto = $("heatmap-photo");
    el.heatmapOverlay = $("heatmap-overlay");
    el.heatmapStack = $("heatmap-stack");
    el.heatmapToggle = $("heatmap-toggle");
    el.advice = $("advice");
    el.resultMeta = $("result-meta");
    el.again = $("again");
    el.modelInfo = $("model-info");

    el.photo.addEventListener("change", onPhotoChange);
    el.form.addEventListener("submit", diagnose);
    el.heatmapToggle.addEventListener("change", function () {
      el.heatmapOverlay.hidden = !el.heatmapToggle.checked;
    });
    el.again.addEventListener("click", function () {
      el.photo.value = "";
      onPhotoChange();
      setStatus("");
      el.photo.focus();
      if (el.form.scrollIntoView) el.form.scrollIntoView();
    });

    loadAdvice();
    loadModelInfo();
    // A file may already be selected (e.g. after a back navigation).
    if (currentFile()) onPhotoChange();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
