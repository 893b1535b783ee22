"""``federate(settings) -> FederateResult``: a federated run on Flower's Deployment Engine, tracked and gated like
central training.

This process (the main environment) partitions the data, starts a SuperLink and one SuperNode per farm from the
Flower environment (``federate.flower_env``) as separate processes on free loopback ports, submits the app with
``flwr run``, logs each round to MLflow as the ServerApp journals it, and stops everything it started, by process
group, when the run ends, fails or passes its deadline. The final global model is then exported to the usual
bundle, registered as ``challenger`` and offered to the gate, unless too few rounds were valid.

Flower lives in its own environment because flwr 1.42 pins typer<0.21, rich<15, fastapi<0.139 and uvicorn<0.50,
older than the service's; that environment sees the main one's packages (torch, Lightning, plantdx) after its own.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plantdx
from plantdx.config import FederateConfig, Settings
from plantdx.data.split import Manifest, manifest_for, write_manifest
from plantdx.errors import PlantdxError
from plantdx.federate.partition import Partition, make_partition, series_of, write_partition

ROUNDS_FILE = "rounds.jsonl"  # the ServerApp's journal (server.py), one JSON line per round
SUMMARY_FILE = "summary.json"
GLOBAL_FILE = "global.pt"
CONNECTION = "plantdx"  # the SuperLink connection's name in the run's own FLWR_HOME
SERVE_PORT = 8000  # `plantdx serve`'s default, and the SuperLink's: never chosen here
_POLL_S = 0.5


class FederateError(PlantdxError):
    """The federated run could not start, failed, or passed its deadline."""


@dataclass
class FederateResult:
    run_dir: Path
    run_id: str | None
    rounds: list[dict[str, Any]]
    valid_rounds: int
    wall_time_s: float
    partition: Partition | None = None
    bundle: Path | None = None
    card: dict[str, Any] | None = None
    version: str | None = None
    accepted: bool = False
    reasons: list[str] = field(default_factory=list)
    champion_after: str | None = None
    pids: dict[str, int] = field(default_factory=dict)  # what the run started (all stopped when it returns)

    @property
    def registered(self) -> bool:
        return self.version is not None


# -- the Flower environment and the processes ------------------------------------------------------------------------


def flower_env(cfg: FederateConfig) -> Path:
    """The virtual environment with flwr: ``federate.flower_env`` as given, else beside the source checkout."""
    candidates = [cfg.flower_env]
    if not cfg.flower_env.is_absolute():
        candidates.append(Path(plantdx.__file__).resolve().parents[2] / cfg.flower_env)
    for env in candidates:
        if (env / "bin" / "flower-superlink").is_file():
            return env.resolve()
    raise FederateError(
        f"no Flower environment at {cfg.flower_env}: `make install` makes .venv-flwr (flwr and its own pins), "
        "or set federate.flower_env"
    )


def flower_version(env: Path) -> str | None:
    found = sorted(env.glob("lib/python*/site-packages/flwr-*.dist-info"))
    return found[0].name.removeprefix("flwr-").removesuffix(".dist-info") if found else None


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (a port in it could be handed to an outgoing
    connection between this check and the SuperLink binding it), and never 8000, where `plantdx serve` listens."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = low if low > 12000 else 65536
    for _ in range(200):
        port = random.randrange(10000, low - 1)
        if port == SERVE_PORT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise FederateError(f"no free loopback port between 10000 and {low}")


class Processes:
    """The processes a run starts, each the leader of its own process group (its ServerApp, SuperExec and
    ClientApp children join it), each with a log file. ``stop`` ends the groups it started, by their ids."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir, self.env = log_dir, dict(env)
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: Sequence[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=cwd, start_new_session=True
            )
        self.started[name] = proc
        return proc

    def log(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def logs(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {name} ({self.log_dir / name}.log) ---\n{self.log(name, lines)}" for name in self.started
        )

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.started.items()}

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to every group started and to every descendant that left it (the SuperLink starts its SuperExec
        in a session of its own), SIGKILL to whatever is left after ``grace_s``; returns when all are gone."""
        family = descendants(p.pid for p in self.started.values())
        for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            for proc in reversed(self.started.values()):
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signum)
            for pid in family:
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)
            end = time.monotonic() + wait_s
            while time.monotonic() < end:
                for proc in self.started.values():
                    proc.poll()  # reap our own children
                if not any(_group_alive(p.pid) for p in self.started.values()) and not any(map(_alive, family)):
                    return
                time.sleep(0.05)


def _parents() -> dict[int, int]:
    """pid -> parent pid, for every process (Linux ``/proc``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, ValueError, IndexError):
                found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return found


def descendants(roots: Iterable[int]) -> set[int]:
    """Every process below ``roots``, whatever group or session it moved to."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent's wait() has finished)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return any(_alive(pid) for pid, group in _groups().items() if group == pgid)


def _groups() -> dict[int, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, ValueError, IndexError):
                found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
    return found


@contextmanager
def processes(log_dir: Path, env: Mapping[str, str]) -> Iterator[Processes]:
    procs = Processes(log_dir, env)
    try:
        yield procs
    finally:
        procs.stop()


@contextmanager
def sigterm_as_error() -> Iterator[None]:
    """SIGTERM (a CI timeout, ``kubectl delete``, ``kill``) becomes an exception while the federation runs, so the
    processes it started are still stopped on the way out; outside the main thread signals cannot be caught."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:  # noqa: ARG001 (the signal handler's signature)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
        raise FederateError("stopped by SIGTERM; the processes the run started were stopped too")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_for_port(port: int, procs: Processes, name: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if procs.started[name].poll() is not None:
            raise FederateError(f"{name} exited before listening on port {port}:\n{procs.log(name)}")
        time.sleep(0.1)
    raise FederateError(f"{name} did not listen on port {port} in time:\n{procs.log(name)}")


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string (same escapes)


def write_node_config(path: Path, fields: Mapping[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key} = {_toml_string(value)}\n" for key, value in fields.items()))
    return path


def write_app(folder: Path, plan: Path, private: bool) -> Path:
    """The Flower app ``flwr run`` bundles: only its pyproject.toml; the code is the installed plantdx package."""
    folder.mkdir(parents=True, exist_ok=True)
    client = "private_app" if private else "app"
    (folder / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "plantdx-federated"
version = "{plantdx.__version__ if plantdx.__version__ != "0.0.0" else "0.1.0"}"
description = "plantdx: farms train one leaf-disease model together; the code is the plantdx package"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "plantdx"

[tool.flwr.app.components]
serverapp = "plantdx.federate.server:app"
clientapp = "plantdx.federate.client:{client}"

[tool.flwr.app.config]
plan = {_toml_string(str(plan))}
"""
    )
    return folder


def write_connection(flwr_home: Path, address: str) -> None:
    """``flwr run``'s SuperLink connection, in the run's own FLWR_HOME (never the user's ~/.flwr)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f"address = {_toml_string(address)}\ninsecure = true\n"
    )


def flower_environment(env_dir: Path, flwr_home: Path) -> dict[str, str]:
    """What every Flower process runs with: its own bin first, no telemetry, no update check, no runtime
    dependency installation (nothing here may reach the network), and this plantdx source importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    source = Path(plantdx.__file__).resolve().parent.parent
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if source.name != "site-packages" and str(source) not in paths:  # a source checkout: run exactly this code
        paths.insert(0, str(source))
    env |= {
        "PATH": f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(env_dir),
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONUNBUFFERED": "1",
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "DO_NOT_TRACK": "1",
    }
    return env


# -- tracking ----------------------------------------------------------------------------------------------------------


class Tracker:
    """The run's MLflow record: the settings and partition up front, one step per round, the artifacts at the end."""

    def __init__(self, settings: Settings, run_name: str, extra: Mapping[str, Any]) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        from plantdx.tracking import experiment_id, git_commit

        self.client = MlflowClient(settings.tracking.uri)
        run = self.client.create_run(
            experiment_id(self.client, settings.tracking),
            run_name=settings.tracking.run_name or run_name,
            tags={"plantdx.kind": "federated"},
        )
        self.run_id = str(run.info.run_id)
        params = {**settings.flat(), **extra, "git.commit": git_commit()}
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def round(self, entry: Mapping[str, Any]) -> None:
        step = int(entry["round"])
        metrics = {"val/acc": entry["val_acc"], "val/f1_macro": entry["val_f1_macro"]}
        if step > 0:
            accepted = entry.get("accepted", [])
            metrics |= {
                "federate/accepted": len(accepted),
                "federate/rejected": len(entry.get("rejected", [])),
                "federate/failed": len(entry.get("failed", [])),
                "federate/valid": float(bool(entry.get("valid"))),
                "federate/bytes_sent": entry.get("bytes_sent", 0),
                "federate/bytes_received": entry.get("bytes_received", 0),
                "federate/round_wall_s": entry.get("wall_s", 0.0),
                "federate/lr": entry.get("lr", 0.0),
            }
            startup = [a["startup-s"] for a in accepted if a.get("startup-s", -1) >= 0]
            if startup:
                metrics["federate/clientapp_startup_s"] = sum(startup) / len(startup)
            norms = [a["update-norm"] for a in accepted if "update-norm" in a]
            if norms:  # what client-side DP would clip: choose federate.dp_clipping_norm near these
                metrics["federate/update_norm"] = sorted(norms)[len(norms) // 2]
        for name, value in metrics.items():
            self.client.log_metric(self.run_id, name, float(value), step=step)

    def finish(self, metrics: Mapping[str, float], artifacts: Sequence[Path], status: str = "FINISHED") -> None:
        for name, value in metrics.items():
            self.client.log_metric(self.run_id, name, float(value))
        for path in artifacts:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status)


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The journal's complete lines (the last may still be being written)."""
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]


# -- the run -----------------------------------------------------------------------------------------------------------


def _plan(
    settings: Settings, manifest: Manifest, run_dir: Path, partition: Partition | None, classes: list[str]
) -> dict[str, Any]:
    from plantdx.federate.training import recipe

    cfg = settings.federate
    cores = os.cpu_count() or 1
    threads = settings.train.threads or (max(1, cores // cfg.clients) if partition is not None else None)
    return {
        "run_dir": str(run_dir),
        "manifest": str(run_dir / "manifest.csv"),
        "manifest_sha256": manifest.digest,
        "federate": cfg.model_dump(mode="json"),
        "train": settings.train.model_dump(mode="json"),
        "dataset": settings.dataset.model_dump(mode="json"),
        "recipe": recipe(settings, classes, threads),
        "farms": {f.name: len(f.rows) for f in partition.farms} if partition is not None else {},
        "server_threads": settings.train.threads or cores,
    }


def _start_local_federation(
    procs: Processes, env_dir: Path, settings: Settings, partition: Partition, run_dir: Path, deadline: float
) -> str:
    cfg = settings.federate
    port = cfg.port or free_port()
    procs.start(
        "superlink",
        [
            str(env_dir / "bin" / "flower-superlink"),
            "--insecure",
            "--isolation=subprocess",
            "--disable-runtime-dependency-installation",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
    )
    _wait_for_port(port, procs, "superlink", deadline)
    address = f"127.0.0.1:{port}"
    roots = json.dumps([r.model_dump(mode="json") for r in settings.dataset.root])
    for farm in partition.farms:
        node_config = write_node_config(
            run_dir / "farms" / f"{farm.name}.toml",
            {
                "name": farm.name,
                "manifest": str(run_dir / "partition" / f"{farm.name}.csv"),
                "roots": roots,
                "cache-dir": str(run_dir / "farms" / "cache"),
                "drill": cfg.drills.get(farm.name, ""),
            },
        )
        procs.start(
            farm.name,
            [
                str(env_dir / "bin" / "flower-supernode"),
                "--insecure",
                f"--superlink={address}",
                "--isolation=subprocess",
                "--host=127.0.0.1",
                f"--port={free_port()}",
                "--node-config",
                str(node_config),
            ],
        )
    return address


def federate(settings: Settings, *, on_round: Callable[[Mapping[str, Any]], None] | None = None) -> FederateResult:
    """Partition, run ``federate.rounds`` rounds on Flower, track them, and register the global model through the gate.

    ``on_round`` hears each round's journal entry as it is logged (a progress display).
    """
    cfg = settings.federate
    started = time.monotonic()
    deadline = started + cfg.deadline_s
    if settings.dataset.train_on_val:
        raise FederateError("dataset.train_on_val is set: the central validation split must stay unseen")
    if cfg.min_replies > cfg.clients:
        raise FederateError(f"federate.min_replies {cfg.min_replies} is more than the {cfg.clients} farms")
    env_dir = flower_env(cfg)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    run_dir = (settings.train.output_dir / f"federate-{stamp}").resolve()
    run_dir.mkdir(parents=True)
    manifest = manifest_for(settings.dataset)
    write_manifest(manifest, run_dir / "manifest.csv")
    partition = None
    if cfg.superlink is None:
        series = series_of(settings.dataset) if cfg.partition == "series" else None
        partition = make_partition(
            manifest, cfg.partition, cfg.clients, seed=settings.dataset.seed, alpha=cfg.dirichlet_alpha, series=series
        )
        write_partition(partition, run_dir / "partition", manifest)
        unknown = sorted(set(cfg.drills) - {f.name for f in partition.farms})
        if unknown:
            raise FederateError(f"federate.drills names farms that do not exist: {', '.join(unknown)}")
    plan = _plan(settings, manifest, run_dir, partition, manifest.classes)
    plan_file = run_dir / "plan.json"
    plan_file.write_text(json.dumps(plan, indent=2))
    flwr_home = run_dir / "flower"
    app_dir = write_app(run_dir / "app", plan_file, private=cfg.dp_noise_multiplier is not None)
    extra = {
        "data.manifest_sha256": manifest.digest,
        "federate.farms": json.dumps(plan["farms"]),
        "federate.flower_version": flower_version(env_dir),
    }
    tracker = Tracker(settings, f"federated-{cfg.strategy}-{cfg.partition}-{stamp}", extra)
    rounds: list[dict[str, Any]] = []
    pids: dict[str, int] = {}
    status = "FAILED"
    try:
        with sigterm_as_error(), processes(run_dir / "logs", flower_environment(env_dir, flwr_home)) as procs:
            if partition is not None:
                address = _start_local_federation(procs, env_dir, settings, partition, run_dir, deadline)
            else:
                address = str(cfg.superlink)
            write_connection(flwr_home, address)
            submit = procs.start(
                "flwr-run", [str(env_dir / "bin" / "flwr"), "run", str(app_dir), CONNECTION, "--stream"], cwd=app_dir
            )
            pids = procs.pids
            while True:
                done = submit.poll() is not None
                for entry in read_rounds(run_dir / ROUNDS_FILE)[len(rounds) :]:
                    rounds.append(entry)
                    tracker.round(entry)
                    if on_round is not None:
                        on_round(entry)
                if done:
                    break
                if time.monotonic() > deadline:
                    raise FederateError(
                        f"the run passed its deadline of {cfg.deadline_s:.0f} s after {max(0, len(rounds) - 1)} "
                        f"rounds; everything it started was stopped\n{procs.logs()}"
                    )
                dead = [n for n in ("superlink",) if n in procs.started and procs.started[n].poll() is not None]
                if dead:
                    raise FederateError(f"the SuperLink exited during the run:\n{procs.logs()}")
                time.sleep(_POLL_S)
            if not (run_dir / SUMMARY_FILE).is_file():
                raise FederateError(
                    f"the ServerApp did not finish (flwr run exited with {submit.returncode}):\n{procs.logs()}"
                )
        status = "FINISHED"
    finally:
        if status == "FAILED":
            tracker.finish({}, [run_dir / "logs", run_dir / ROUNDS_FILE], status="FAILED")
    result = FederateResult(
        run_dir=run_dir,
        run_id=tracker.run_id,
        rounds=rounds,
        valid_rounds=sum(1 for r in rounds if r["round"] > 0 and r.get("valid")),
        wall_time_s=time.monotonic() - started,
        partition=partition,
        pids=pids,
    )
    artifacts = [run_dir / "partition", run_dir / ROUNDS_FILE, plan_file, run_dir / "logs"]
    try:
        _conclude(settings, manifest, result, tracker)
    finally:
        tracker.finish(
            {"federate/valid_rounds": result.valid_rounds, "federate/wall_time_s": result.wall_time_s}, artifacts
        )
    return result


def _card(settings: Settings, result: FederateResult, env_dir: Path | None) -> dict[str, Any]:
    cfg = settings.federate
    card: dict[str, Any] = {
        "engine": f"Flower {flower_version(env_dir) if env_dir else '?'} (Deployment Engine)",
        "partition": cfg.partition,
        "farms": [
            {"name": f.name, "description": f.description, "images": len(f.rows)}
            for f in (result.partition.farms if result.partition else ())
        ],
        "strategy": cfg.strategy,
        "rounds": cfg.rounds,
        "valid_rounds": result.valid_rounds,
        "local_epochs": cfg.local_epochs,
        "batchnorm": cfg.batchnorm,
        "min_replies": cfg.min_replies,
        "privacy": None,
    }
    if cfg.strategy == "fedprox":
        card["proximal_mu"] = cfg.proximal_mu
    if cfg.strategy == "fedtrimmedavg":
        card["trim_beta"] = cfg.trim_beta
    if cfg.dp_noise_multiplier is not None:
        card["privacy"] = {
            "mechanism": "client-side fixed clipping (Flower fixedclipping_mod) + server-side Gaussian noise "
            "(DifferentialPrivacyClientSideFixedClipping)",
            "clipping_norm": cfg.dp_clipping_norm,
            "noise_multiplier": cfg.dp_noise_multiplier,
            "noise_stddev": cfg.dp_noise_multiplier * cfg.dp_clipping_norm / cfg.clients,
            "clients_per_round": cfg.clients,
            "rounds": cfg.rounds,
            "epsilon": None,  # not accounted: the integer counters stay home, so no uniform-weight FedAvg accountant
        }
    return card


def _conclude(settings: Settings, manifest: Manifest, result: FederateResult, tracker: Tracker) -> None:
    """Export the global model, register it as challenger and offer it to the gate, when enough rounds counted."""
    cfg = settings.federate
    needed = cfg.min_valid_rounds or cfg.rounds
    if result.valid_rounds < needed:
        result.reasons.append(
            f"{result.valid_rounds} valid rounds of {cfg.rounds}, fewer than the {needed} needed: not registered"
        )
        return
    if not cfg.register_model:
        return
    import torch

    from plantdx.export import export_bundle
    from plantdx.federate.training import create_module
    from plantdx.registry import CHAMPION, Registry
    from plantdx.tracking import git_commit

    plan = json.loads((result.run_dir / "plan.json").read_text())
    module = create_module(plan["recipe"])
    module.hparams["pretrained"] = settings.model.pretrained  # the card tells the warm start the server used
    state = torch.load(result.run_dir / GLOBAL_FILE, map_location="cpu", weights_only=True)
    module.model.load_state_dict({**module.model.state_dict(), **state})
    env_dir = flower_env(cfg)
    exported = export_bundle(
        settings,
        module.eval(),
        manifest,
        result.run_dir / "bundle",
        run_id=result.run_id,
        extra_card={"federated": _card(settings, result, env_dir), "git_commit": git_commit()},
    )
    result.bundle, result.card = exported.bundle, exported.card
    metrics = exported.card.get("metrics", {})
    for name in ("test_accuracy", "test_f1_macro"):
        if isinstance(metrics.get(name), int | float):
            tracker.client.log_metric(tracker.run_id, f"test/{name.removeprefix('test_')}", float(metrics[name]))
    registry = Registry(settings.tracking, settings.gate)
    info = registry.register(exported.bundle, run_id=result.run_id, git_commit=git_commit())
    result.version = info.version
    gate = registry.gate(info)
    result.accepted, result.reasons = gate.accepted, list(gate.reasons)
    if gate.accepted:
        registry.promote(info.version)
    after = registry.by_alias(CHAMPION)
    result.champion_after = after.version if after else None
