"""The page's static files, with the vendored runtime sent compressed.

onnxruntime-web's WASM binary is 15 MB; the JS build (scripts/build_web.mjs) writes brotli and gzip copies beside
it (2.8 and 3.8 MB), sent to browsers that accept them. Precomputed, not compressed per request: a phone's first
visit should not cost the server a second of CPU.
"""

from __future__ import annotations

import mimetypes
import os

from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ENCODINGS = (("br", ".br"), ("gzip", ".gz"))


class PageFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        accepted = dict(scope.get("headers") or []).get(b"accept-encoding", b"").decode("latin-1")
        if scope["method"] in ("GET", "HEAD") and not path.endswith((".br", ".gz")):
            for encoding, suffix in ENCODINGS:
                if encoding not in accepted:
                    continue
                full, stat = self.lookup_path(path + suffix)
                if stat is None or not os.path.isfile(full):
                    continue
                media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
                headers = {"Content-Encoding": encoding, "Vary": "Accept-Encoding"}
                return FileResponse(full, stat_result=stat, media_type=media_type, headers=headers)
        return await super().get_response(path, scope)
