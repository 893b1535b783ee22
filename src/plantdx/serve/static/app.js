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
  // Offline diagnosis (static/edge/engine.mjs): the engine, once loaded, and the queue of feedback to send.
  var edge = { engine: null, outbox: null, error: null, updating: false, pending: 0 };
  var SERVER_TIMEOUT_WITH_EDGE_MS = 10000; // with a model on the phone, a silent network is not waited for long
  var FLUSH_EVERY_MS = 10000;
  var CHECK_EVERY_MS = 30 * 60 * 1000; // a page left open still hears of a new champion
  var lastResult = null; // {answer, file}
  var knownClasses = [];
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
    show(el.feedbackForm, false);
    el.feedbackStatus.textContent = "";
    show(el.offline, false);
    lastResult = null;
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

  function edgeReady() {
    return !!(edge.engine && edge.engine.ready);
  }

  function diagnose(event) {
    if (event) event.preventDefault();
    var file = currentFile();
    if (!file || busy) return;
    clearError();
    resetResult();
    setBusy(true);
    var done = function () {
      setBusy(false);
      if (!el.result.hidden) setStatus("Result ready.");
    };
    if (navigator.onLine === false && edgeReady()) {
      diagnoseHere(file, "You are offline.").then(done);
      return;
    }
    askServer(file).then(done);
  }

  // The phone's own model: the same answer the service gives (tests/serve/test_edge_browser.py), without the
  // heat map; feedback on it is kept until it can be sent.
  function diagnoseHere(file, why) {
    return edge.engine
      .diagnose(file)
      .then(function (answer) {
        return adviceReady.then(function () {
          renderResult(answer, file);
          el.offline.textContent =
            why + " This leaf was checked on this phone (model " + versionLabel(answer.model_version) +
            "). The heat map needs a connection; feedback is kept and sent when you are back online.";
          show(el.offline, true);
        });
      })
      .catch(function (err) {
        showError(err && err.message ? err.message : "This photo could not be checked on this phone.");
        setStatus("");
      });
  }

  function askServer(file) {
    var form = new FormData();
    form.append("file", file, file.name || "leaf.jpg");

    var controller = typeof AbortController === "function" ? new AbortController() : null;
    var timer = controller
      ? setTimeout(function () {
          controller.abort();
        }, edgeReady() ? SERVER_TIMEOUT_WITH_EDGE_MS : REQUEST_TIMEOUT_MS)
      : null;

    var responseRef = null;
    return fetch(PREDICT_URL, {
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
        flushOutbox(); // the server answers: whatever waits in the queue can go too
        // Make sure advice is loaded (or has failed) before rendering names.
        return adviceReady.then(function () {
          renderResult(r.body, file);
        });
      })
      .catch(function (err) {
        if (!responseRef && edgeReady()) {
          return diagnoseHere(file, "The server cannot be reached.");
        }
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
      });
  }

  function renderResult(p, file) {
    lastResult = { answer: p, file: file };
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

    renderFeedback(p);
    var meta = [];
    var where = p.local ? "Checked on this phone in " : "Checked in ";
    if (isFinite(Number(p.inference_time_ms))) meta.push(where + Math.round(Number(p.inference_time_ms)) + " ms");
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
        knownClasses = classes.filter(function (c) {
          return c !== (m && m.reject_label);
        });
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
        el.modelInfo.textContent = "Model information is not available right now (offline?).";
      });
  }

  /* ---------- feedback (queued when it cannot be sent) ---------- */

  function renderFeedback(p) {
    var classes = knownClasses.length ? knownClasses : edge.engine && edge.engine.model ? edge.engine.model.classes : [];
    clear(el.feedbackLabel);
    classes.forEach(function (c) {
      var option = make("option", describe(c).text);
      option.value = c;
      if (c === p.prediction) option.selected = true;
      el.feedbackLabel.appendChild(option);
    });
    el.feedbackStatus.textContent = "";
    show(el.feedbackForm, classes.length > 0);
  }

  function localId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return "local-" + window.crypto.randomUUID();
    return "local-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  function queueFeedback(item, note) {
    if (!edge.outbox) {
      el.feedbackStatus.textContent = "It could not be sent, and this browser cannot keep it. Please try again later.";
      return Promise.resolve();
    }
    return edge.outbox.add(item).then(function () {
      return countPending().then(function (n) {
        el.feedbackStatus.textContent =
          note + " It is kept on this phone and will be sent when you are back online (" + n + " waiting).";
      });
    });
  }

  function sendFeedback(event) {
    if (event) event.preventDefault();
    if (!lastResult) return;
    var label = el.feedbackLabel.value;
    var answer = lastResult.answer;
    if (!answer.request_id) {
      // diagnosed on the phone: the photo goes with it, so the service can log it and learn from it
      var file = lastResult.file;
      queueFeedback(
        { local_id: localId(), photo: file, photo_name: file && file.name, label: label, local_answer: answer.prediction },
        "Thank you."
      ).then(flushOutbox);
      return;
    }
    fetch("/v1/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ request_id: answer.request_id, label: label }),
    })
      .then(function (r) {
        if (r.ok) {
          el.feedbackStatus.textContent = "Thank you: sent.";
          return;
        }
        return r.json().then(
          function (body) {
            el.feedbackStatus.textContent = errorMessageFor(r, body);
          },
          function () {
            el.feedbackStatus.textContent = errorMessageFor(r, null);
          }
        );
      })
      .catch(function () {
        queueFeedback({ request_id: answer.request_id, label: label }, "Thank you.");
      });
  }

  function countPending() {
    return edge.outbox.count().then(function (n) {
      edge.pending = n;
      renderEdgeInfo();
      return n;
    });
  }

  function flushOutbox() {
    if (!edge.outbox) return Promise.resolve();
    return edge.outbox
      .flush()
      .then(function (sent) {
        if (sent && !el.feedbackForm.hidden) {
          el.feedbackStatus.textContent = "Feedback kept on this phone has been sent (" + sent + ").";
        }
      })
      .catch(function () {
        /* still offline: it stays queued */
      })
      .then(countPending);
  }

  /* ---------- offline diagnosis: the model on the phone ---------- */

  function timeLabel(ms) {
    if (!ms) return "never";
    var d = new Date(ms);
    return d.toLocaleDateString() + " " + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function renderEdgeInfo() {
    var engine = edge.engine;
    var text;
    if (!window.isSecureContext || !("serviceWorker" in navigator)) {
      text = "Offline diagnosis needs the page over HTTPS (or on this computer).";
    } else if (engine && engine.model) {
      text =
        "Offline diagnosis ready: model " + versionLabel(engine.model.version) + " (" + engine.model.sha256.slice(0, 8) +
        "), last checked for updates " + timeLabel(engine.checkedAt) + ".";
    } else if (edge.error) {
      text = "Offline diagnosis is not available: " + edge.error;
    } else if (edge.updating) {
      text = "Offline diagnosis: getting the model…";
    } else {
      text = "Offline diagnosis is not available for this model.";
    }
    if (edge.error && engine && engine.model) text += " Update refused: " + edge.error;
    if (edge.pending) text += " " + edge.pending + " feedback waiting to be sent.";
    el.edgeInfo.textContent = text;
    el.edgeInfo.dataset.pending = String(edge.pending);
    el.edgeInfo.dataset.sha256 = engine && engine.model ? engine.model.sha256 : "";
    el.edgeInfo.dataset.version = engine && engine.model ? engine.model.version : "";
  }

  function updateModel() {
    if (!edge.engine || edge.updating) return Promise.resolve();
    edge.updating = true;
    renderEdgeInfo();
    return edge.engine
      .update(getJSON)
      .then(function (r) {
        edge.error = null;
        if (r.changed && navigator.storage && navigator.storage.persist) {
          navigator.storage.persist().catch(function () {});
        }
      })
      .catch(function (err) {
        edge.error = err && err.message ? err.message : "the model could not be updated";
      })
      .then(function () {
        edge.updating = false;
        renderEdgeInfo();
      });
  }

  function startEdge() {
    if (!window.isSecureContext || !("serviceWorker" in navigator) || typeof indexedDB === "undefined") {
      renderEdgeInfo();
      return;
    }
    import("/static/edge/engine.mjs")
      .then(function (mod) {
        var engine = new mod.EdgeEngine();
        return engine.start().then(function () {
          edge.engine = engine;
          edge.outbox = new mod.Outbox(engine.db);
        });
      })
      .catch(function (err) {
        edge.error = err && err.message ? err.message : "the model kept on this phone could not be opened";
      })
      .then(function () {
        renderEdgeInfo();
        // the worker keeps the page's files once the model is in: on the first visit they do not compete
        var registerWorker = function () {
          navigator.serviceWorker.register("/sw.js").catch(function () {});
        };
        (navigator.onLine !== false ? updateModel() : Promise.resolve()).then(registerWorker, registerWorker);
        flushOutbox();
        setInterval(flushOutbox, FLUSH_EVERY_MS);
        setInterval(function () {
          if (navigator.onLine !== false) updateModel();
        }, CHECK_EVERY_MS);
        showConnection();
      });
    window.addEventListener("online", function () {
      showConnection();
      updateModel();
      flushOutbox();
    });
    window.addEventListener("offline", showConnection);
  }

  // Say so as soon as the phone knows it has no signal, not only after a diagnosis.
  function showConnection() {
    if (navigator.onLine === false) {
      el.offline.textContent = edgeReady()
        ? "You are offline: leaves are checked on this phone, and feedback is kept until you are back online."
        : "You are offline, and this phone has no model yet: open the page once with a connection.";
      show(el.offline, true);
    } else if (lastResult === null || !lastResult.answer.local) {
      show(el.offline, false);
    }
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
    el.edgeInfo = $("edge-info");
    el.offline = $("offline");
    el.feedbackForm = $("feedback-form");
    el.feedbackLabel = $("feedback-label");
    el.feedbackStatus = $("feedback-status");

    el.photo.addEventListener("change", onPhotoChange);
    el.form.addEventListener("submit", diagnose);
    el.feedbackForm.addEventListener("submit", sendFeedback);
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
    startEdge();
    // A file may already be selected (e.g. after a back navigation).
    if (currentFile()) onPhotoChange();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
