#!/usr/bin/env bash
# Audit the installed environment (.venv) for known vulnerabilities with pip-audit (PyPI's advisory data).
#
# Fails (1) when an installed package has a known vulnerability, and (2) when packages could not be checked at all
# (no network, or an index without PyPI's per-version JSON API): an audit that checked nothing must not pass.
# plantdx itself (editable) is skipped. Accept a reviewed advisory with --ignore-vuln ID; list packages that are
# not on PyPI (so cannot be audited) in AUDIT_NOT_ON_PYPI="name other-name".
#
# Usage: scripts/audit.sh [pip-audit options]      Needs https://pypi.org; VENV=path overrides .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT

status=0
"$VENV/bin/pip-audit" --local --skip-editable --progress-spinner off --desc on --aliases on \
  --format json --output "$report" "$@" || status=$?

exec "$VENV/bin/python" - "$report" "$status" <<'PY'
import json
import os
import sys

path, status = sys.argv[1], int(sys.argv[2])
try:
    deps = json.load(open(path))["dependencies"]
except (OSError, ValueError, KeyError):
    sys.exit(f"pip-audit failed (exit {status}) before writing a report")
allowed = set(os.environ.get("AUDIT_NOT_ON_PYPI", "").split())
vulnerable = [d for d in deps if d.get("vulns")]
editable = [d for d in deps if "editable" in d.get("skip_reason", "")]  # plantdx itself: not on PyPI
skipped = [d for d in deps if "skip_reason" in d and d["name"] not in allowed and d not in editable]
audited = [d for d in deps if "skip_reason" not in d]
for d in vulnerable:
    for v in d["vulns"]:
        fix = ", ".join(v.get("fix_versions") or []) or "no fix yet"
        aliases = ", ".join(v.get("aliases") or [])
        print(f"VULNERABLE {d['name']} {d['version']}: {v['id']} ({aliases}) fixed in: {fix}")
        summary = (v.get("description") or "").strip().splitlines()
        if summary:
            print(f"    {summary[0][:200]}")
print(f"pip-audit: {len(audited)} packages audited, {len(vulnerable)} vulnerable, {len(skipped)} not audited")
if skipped:
    print("not audited: " + ", ".join(f"{d['name']} {d.get('version', '')}".strip() for d in skipped))
    print(f"  (first reason: {skipped[0]['skip_reason']})")
if vulnerable:
    sys.exit(1)
if skipped:
    sys.exit(2)
PY
