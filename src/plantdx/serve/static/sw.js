/* plantdx service worker: keeps the page, its scripts, the in-browser runtime and the advice texts, so that after
   one visit the page opens and diagnoses with no network. The model itself is kept by the page (IndexedDB), which
   checks its sha256 before swapping; this worker never touches /edge/ or the API's answers other than the advice. */
"use strict";

var CACHE = "plantdx-page-v1";
var VENDOR = "/static/vendor/onnxruntime-web/";
var SHELL = [
  "/",
  "/static/app.js",
  "/static/style.css",
  "/static/edge/engine.mjs",
  "/static/edge/preprocess.mjs",
  "/manifest.webmanifest",
  "/static/icons/icon-192.png",
  "/static/icons/icon-512.png",
  VENDOR + "ort.wasm.min.mjs",
  VENDOR + "ort-wasm-simd-threaded.mjs",
  VENDOR + "ort-wasm-simd-threaded.wasm",
  "/v1/advice",
];
// How long a page load waits for the network before the cached page is shown (no signal often means no answer
// rather than a refused connection).
var NETWORK_TIMEOUT_MS = 4000;

self.addEventListener("install", function (event) {
  event.waitUntil(
    caches
      .open(CACHE)
      .then(function (cache) {
        return cache.addAll(SHELL);
      })
      .then(function () {
        return self.skipWaiting();
      })
  );
});

self.addEventListener("activate", function (event) {
  event.waitUntil(
    caches
      .keys()
      .then(function (keys) {
        return Promise.all(
          keys.map(function (key) {
            return key === CACHE ? null : caches.delete(key);
          })
        );
      })
      .then(function () {
        return self.clients.claim();
      })
  );
});

function withTimeout(promise, ms) {
  return new Promise(function (resolve, reject) {
    var timer = setTimeout(function () {
      reject(new Error("timeout"));
    }, ms);
    promise.then(
      function (value) {
        clearTimeout(timer);
        resolve(value);
      },
      function (err) {
        clearTimeout(timer);
        reject(err);
      }
    );
  });
}

// The page and the advice: the network when it answers (a new page or new advice), else the copy kept.
function networkFirst(request, key) {
  return withTimeout(fetch(request), NETWORK_TIMEOUT_MS)
    .then(function (response) {
      if (response.ok) {
        var copy = response.clone();
        caches.open(CACHE).then(function (cache) {
          cache.put(key, copy);
        });
      }
      return response;
    })
    .catch(function () {
      return caches.match(key).then(function (hit) {
        return hit || Response.error();
      });
    });
}

// Scripts, styles, icons and the runtime: the copy kept at once, refreshed in the background for the next visit.
function cacheFirst(request) {
  return caches.match(request).then(function (hit) {
    var refresh = fetch(request)
      .then(function (response) {
        if (response.ok) {
          var copy = response.clone();
          caches.open(CACHE).then(function (cache) {
            cache.put(request, copy);
          });
        }
        return response;
      })
      .catch(function () {
        return hit || Response.error();
      });
    return hit || refresh;
  });
}

self.addEventListener("fetch", function (event) {
  var request = event.request;
  if (request.method !== "GET") return; // predictions and feedback go to the network, or fail and are queued
  var url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === "navigate" && url.pathname === "/") {
    event.respondWith(networkFirst(request, "/"));
  } else if (url.pathname === "/v1/advice") {
    event.respondWith(networkFirst(request, "/v1/advice"));
  } else if (url.pathname.indexOf("/static/") === 0 || url.pathname === "/manifest.webmanifest") {
    event.respondWith(cacheFirst(request));
  }
  // everything else (/v1/model, /edge/..., the API) goes to the network as if there were no worker
});
