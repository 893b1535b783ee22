"""The MLflow Model Registry, with aliases: the only module that talks to it.

A bundle is logged as run artifacts (``bundle/``) and registered as a version of ``tracking.registered_model``
with its test metrics, data hash and git commit as tags; a new version gets the alias ``challenger``. ``promote``
moves ``champion`` only through the gate; ``rollback`` moves it back along the recorded history.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plantdx.bundle import Bundle, load_bundle
from plantdx.config import GateConfig, TrackingConfig
from plantdx.errors import PlantdxError, TrackingError
from plantdx.tracking import experiment_id

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "plantdx.champion_history"


class PromotionRefusedError(PlantdxError):
    """The candidate did not pass the gate; the message lists every reason."""


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    run_id: str | None
    source: str
    aliases: list[str]
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass
class GateResult:
    candidate: str
    champion: str | None
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)


def _version_tags(card: dict[str, Any], git_commit: str | None) -> dict[str, str]:
    """The version's tags; a value the card lacks is left out, never written as "None"."""
    metrics = card.get("metrics", {})
    parity = card.get("parity", {}).get("onnx", {})
    tags = {
        "test_accuracy": metrics.get("test_accuracy"),
        "test_f1_macro": metrics.get("test_f1_macro"),
        "test_ece": metrics.get("test_ece"),
        "test_f1_per_class": json.dumps(metrics.get("test_f1_per_class", {})),
        "parity_passed": str(bool(parity.get("passed"))).lower(),
        "data_hash": card.get("data", {}).get("manifest_sha256"),
        "test_hash": card.get("data", {}).get("test_sha256"),
        "architecture": card.get("architecture"),
        # the commit that trained it (recorded by export), else the one registering it
        "git_commit": card.get("git_commit") or git_commit or "unknown",
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


def _score(tags: dict[str, str], metric: str) -> float:
    """A metric tag as a number; NaN when it is missing or unreadable (versions registered before tags were
    left out wrote "None")."""
    try:
        return float(tags.get(metric, "nan"))
    except ValueError:
        return float("nan")


def _known(value: str | None) -> bool:
    return value not in (None, "", "None")


def parse_model_uri(spec: str) -> tuple[str, str]:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> (name, alias or version number); the alias
    defaults to ``champion``. The service and ``plantdx monitor`` read ``serve.model`` through this one rule."""
    name, _, alias = spec.removeprefix("models:/").partition("@")
    if not alias and "/" in name:
        name, alias = name.split("/", 1)
    return name, alias or CHAMPION


def ping(uri: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` when an HTTP tracking server does not answer at all.

    MLflow's client retries a refused connection with back-off for about four minutes (7 retries) before giving
    up: a service starting while the registry is down would sit unready that long before falling back. Any HTTP
    answer, even an error from a proxy in front, counts as reachable; other URIs (sqlite, file) are not checked.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        raise TrackingError(f"the tracking server does not answer ({type(exc).__name__}: {exc})") from None


class Registry:
    def __init__(self, tracking: TrackingConfig, gate: GateConfig | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking = tracking
        self.gate_cfg = gate or GateConfig()
        self.name = tracking.registered_model
        self.client = MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)

    # -- reading ---------------------------------------------------------------------------------------------------

    def _info(self, mv: Any) -> VersionInfo:
        return VersionInfo(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id,
            source=mv.source,
            aliases=list(mv.aliases or []),
            tags=dict(mv.tags or {}),
        )

    def get(self, version: str | int) -> VersionInfo:
        try:
            return self._info(self.client.get_model_version(self.name, str(version)))
        except Exception as exc:
            raise TrackingError(f"model {self.name} has no version {version} at {self.tracking.uri}: {exc}") from None

    def by_alias(self, alias: str) -> VersionInfo | None:
        """The version behind ``alias``; None only when the store says there is none. Any other failure (a timeout,
        a server error) is an error: read as "no champion", it would let the gate wave through a worse model."""
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self.client.get_model_version_by_alias(self.name, alias))
        except Exception as exc:
            if isinstance(exc, MlflowException):
                missing_model = exc.error_code == "RESOURCE_DOES_NOT_EXIST"
                missing_alias = (
                    exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in str(exc) and "not found" in str(exc)
                )
                if missing_model or missing_alias:
                    return None
            raise TrackingError(
                f"cannot read alias {alias!r} of {self.name} at {self.tracking.uri}: {type(exc).__name__}: {exc}"
            ) from None

    def versions(self) -> list[VersionInfo]:
        found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted((self._info(mv) for mv in found), key=lambda v: int(v.version))

    # -- writing ---------------------------------------------------------------------------------------------------

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name, description="plantdx leaf disease classifier bundles")

    def _bundle_run(self, card: dict[str, Any]) -> str:
        """A run to hold a bundle that has none (e.g. one trained elsewhere or shipped in the package)."""
        run = self.client.create_run(
            experiment_id(self.client, self.tracking), run_name=f"bundle-{card.get('architecture')}"
        )
        self.client.set_tag(run.info.run_id, "plantdx.kind", "bundle")
        self.client.set_terminated(run.info.run_id)
        return str(run.info.run_id)

    def _existing_run(self, run_id: str | None) -> str | None:
        """The card's run, if this tracking store has it (a bundle may come from another store)."""
        if not run_id:
            return None
        try:
            return str(self.client.get_run(run_id).info.run_id)
        except Exception:
            return None

    def register(self, bundle_dir: Path, run_id: str | None = None, git_commit: str | None = None) -> VersionInfo:
        """Log the bundle under the run's ``bundle/`` artifacts, register it, and point ``challenger`` at it."""
        bundle = load_bundle(bundle_dir)  # never register a bundle that would be refused at serving time
        run_id = run_id or self._existing_run(bundle.card.get("run_id")) or self._bundle_run(bundle.card)
        # Each registration gets its own folder: re-exporting from one run must never rewrite an earlier version.
        folder = f"bundles/{uuid.uuid4().hex[:12]}"
        try:
            self.client.log_artifacts(run_id, str(bundle_dir), folder)
            source = f"{self.client.get_run(run_id).info.artifact_uri}/{folder}"
            self._ensure_model()
            mv = self.client.create_model_version(
                self.name, source, run_id=run_id, tags=_version_tags(bundle.card, git_commit)
            )
            self.client.set_registered_model_alias(self.name, CHALLENGER, str(mv.version))
        except PlantdxError:
            raise
        except Exception as exc:
            raise TrackingError(f"cannot register {bundle_dir} at {self.tracking.uri}: {exc}") from None
        return self.get(mv.version)

    # -- the gate --------------------------------------------------------------------------------------------------

    def gate(self, candidate: VersionInfo) -> GateResult:
        cfg = self.gate_cfg
        champion = self.by_alias(CHAMPION)
        result = GateResult(candidate=candidate.version, champion=champion.version if champion else None, accepted=True)
        if candidate.tags.get("parity_passed") != "true":
            result.reasons.append("its bundle did not pass the ONNX parity check")
        metric = _score(candidate.tags, cfg.metric)
        result.checks["candidate_" + cfg.metric] = metric
        if metric != metric:  # NaN: the tag is missing
            result.reasons.append(f"it has no {cfg.metric} tag")
        if champion is not None and champion.version != candidate.version:
            base = _score(champion.tags, cfg.metric)
            result.checks["champion_" + cfg.metric] = base
            # the same test split is what makes the scores comparable; bundles from before test_hash have data_hash
            key = (
                "test_hash"
                if _known(candidate.tags.get("test_hash")) and _known(champion.tags.get("test_hash"))
                else "data_hash"
            )
            ours, theirs = candidate.tags.get(key, "?"), champion.tags.get(key, "?")
            if ours != theirs:
                result.reasons.append(
                    f"it was scored on another test split than champion v{champion.version} "
                    f"({key.replace('_', ' ')} {ours[:12]} vs {theirs[:12]})"
                )
            if not metric > base + cfg.margin:  # beat it: a tie is not a reason to change what serves
                result.reasons.append(
                    f"{cfg.metric} {metric:.4f} does not beat champion v{champion.version}'s {base:.4f} "
                    f"by the required margin {cfg.margin}"
                )
            cand_f1 = json.loads(candidate.tags.get("test_f1_per_class", "{}"))
            base_f1 = json.loads(champion.tags.get("test_f1_per_class", "{}"))
            worse = {
                c: base_f1[c] - cand_f1.get(c, 0.0)
                for c in base_f1
                if base_f1[c] - cand_f1.get(c, 0.0) > cfg.max_class_drop
            }
            result.checks["classes_worse_than_allowed"] = worse
            for cls, drop in sorted(worse.items(), key=lambda kv: -kv[1]):
                result.reasons.append(f"class {cls} F1 drops by {drop:.4f} (allowed {cfg.max_class_drop})")
        result.accepted = not result.reasons
        return result

    def promote(self, version: str | int | None = None, *, force: bool = False) -> GateResult:
        """Move ``champion`` to ``version`` (default: the challenger) if the gate accepts it, or if forced."""
        candidate = self.get(version) if version is not None else self.by_alias(CHALLENGER)
        if candidate is None:
            raise PromotionRefusedError(f"model {self.name} has no challenger to promote; register one first")
        previous = self.by_alias(CHAMPION)
        if previous is not None and previous.version == candidate.version:
            return GateResult(candidate.version, previous.version, accepted=True, checks={"already_champion": True})
        result = self.gate(candidate)
        cfg = self.gate_cfg
        if not result.accepted and not force:
            raise PromotionRefusedError(f"v{candidate.version} not promoted: " + "; ".join(result.reasons))
        self.client.set_registered_model_alias(self.name, CHAMPION, candidate.version)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.client.set_model_version_tag(self.name, candidate.version, "promoted_at", now)
        # The gate it passed, as configured: a lenient one (a wide class drop, say) is on record like --force is.
        gate = {
            "metric": cfg.metric,
            "margin": cfg.margin,
            "max_class_drop": cfg.max_class_drop,
            "over": result.champion,
        }
        self.client.set_model_version_tag(self.name, candidate.version, "promotion_gate", json.dumps(gate))
        if force and not result.accepted:
            self.client.set_model_version_tag(
                self.name, candidate.version, "forced_promotion", "; ".join(result.reasons)
            )
        history = self._history()
        if previous is not None and (not history or history[-1] != previous.version):
            history.append(previous.version)
        history.append(candidate.version)
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, ",".join(history[-50:]))
        return result

    def _history(self) -> list[str]:
        tags = self.client.get_registered_model(self.name).tags or {}
        return [v for v in tags.get(HISTORY_TAG, "").split(",") if v]

    def rollback(self) -> VersionInfo:
        """Point ``champion`` back at the version it had before the last promotion.

        The rolled-back version loses the ``challenger`` alias too, so a plain ``promote`` does not put it back.
        """
        current = self.by_alias(CHAMPION)  # None too when the model is not registered at all
        if current is None:
            raise PromotionRefusedError(f"model {self.name} has no champion to roll back from")
        history = self._history()
        while history and history[-1] == current.version:
            history.pop()
        if not history:
            raise PromotionRefusedError(f"model {self.name} has no earlier champion to roll back to")
        target = history[-1]
        self.client.set_registered_model_alias(self.name, CHAMPION, target)
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, ",".join(history))
        self.client.set_model_version_tag(self.name, current.version, "rolled_back_at", datetime.now(UTC).isoformat())
        challenger = self.by_alias(CHALLENGER)
        if challenger is not None and challenger.version == current.version:
            self.client.delete_registered_model_alias(self.name, CHALLENGER)
        return self.get(target)

    # -- serving side ----------------------------------------------------------------------------------------------

    def resolve(self, alias: str = CHAMPION, cache_dir: Path | None = None) -> Bundle:
        """Download the bundle behind ``alias`` (or a version number) and verify it."""
        import mlflow

        info = self.get(alias) if alias.isdigit() else self.by_alias(alias)
        if info is None:
            raise TrackingError(f"model {self.name} has no version with alias {alias!r} at {self.tracking.uri}")
        target = (cache_dir or Path(".plantdx") / "bundles") / self.name / info.version
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{info.version}-", dir=target.parent))  # no two resolves collide
        try:
            uri = self.client.get_model_version_download_uri(self.name, info.version)
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=str(staging), tracking_uri=self.tracking.uri
                )
            )
            bundle = load_bundle(local)  # verify before it replaces anything
        except PlantdxError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise TrackingError(
                f"cannot download v{info.version} of {self.name}: {type(exc).__name__}: {exc}"
            ) from None
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(bundle.path), target)
        shutil.rmtree(staging, ignore_errors=True)
        return load_bundle(target)
