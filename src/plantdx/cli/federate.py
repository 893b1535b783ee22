"""``plantdx federate``: farms train one model together on Flower, and the result goes through the gate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.table import Table

from plantdx.cli.app import ConfigOption, SetOption, app, console, err_console, settings_from


@app.command()
def federate(
    clients: Annotated[int | None, typer.Option(help="Farms: one SuperNode each (federate.clients).")] = None,
    partition: Annotated[
        str | None, typer.Option(help="iid, crop, series, source or dirichlet (federate.partition).")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds (federate.rounds).")] = None,
    strategy: Annotated[
        str | None, typer.Option(help="fedavg, fedprox, fedmedian or fedtrimmedavg (federate.strategy).")
    ] = None,
    superlink: Annotated[
        str | None, typer.Option(help="Join a running SuperLink at host:port instead of starting one.")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Train with Flower: a SuperLink and one SuperNode per farm, each farm on its own photos; then export,
    register as challenger and promote only through the gate."""
    from plantdx.federate.run import federate as run_federation

    options = {"clients": clients, "partition": partition, "rounds": rounds, "strategy": strategy}
    overrides = [f"federate.{k}={v}" for k, v in options.items() if v is not None]
    if superlink is not None:
        overrides.append(f"federate.superlink={superlink}")
    settings = settings_from(config, [*(set_ or []), *overrides])

    def show(entry: Mapping[str, Any]) -> None:
        line = f"round {entry['round']}: val acc {entry['val_acc']:.4f}, macro-F1 {entry['val_f1_macro']:.4f}"
        if entry["round"] > 0:
            line += (
                f"; {len(entry['accepted'])} accepted, {len(entry['rejected'])} rejected, {len(entry['failed'])} "
                f"failed; {entry['bytes_sent'] / 2**20:.1f} MiB out, {entry['bytes_received'] / 2**20:.1f} MiB in; "
                f"{entry['wall_s']:.1f} s"
            )
        err_console.print(line, highlight=False, soft_wrap=True)
        for bad in entry.get("rejected", []):
            err_console.print(
                f"  rejected {bad['farm']} (node {bad['node']}): {bad['reason']}", highlight=False, soft_wrap=True
            )
        for bad in entry.get("failed", []):
            err_console.print(f"  failed node {bad['node']}: {bad['reason']}", highlight=False, soft_wrap=True)

    result = run_federation(settings, on_round=show)
    if result.partition is not None:
        table = Table(title=f"farms ({settings.federate.partition})")
        for col in ("farm", "photos", "what"):
            table.add_column(col, justify="right" if col == "photos" else "left")
        for farm in result.partition.farms:
            table.add_row(farm.name, str(len(farm.rows)), farm.description)
        console.print(table)
    console.print(
        f"{result.valid_rounds} valid rounds in {result.wall_time_s:.0f} s; MLflow run {result.run_id}; "
        f"files in {result.run_dir}",
        soft_wrap=True,
    )
    if result.card is not None:
        m = result.card["metrics"]
        console.print(
            f"test accuracy {m['test_accuracy']:.4f}, macro-F1 {m['test_f1_macro']:.4f}; bundle {result.bundle}"
        )
    if result.version is not None:
        verdict = f"promoted to champion (v{result.champion_after})" if result.accepted else "not promoted"
        console.print(f"registered v{result.version} as challenger; {verdict}", highlight=False, soft_wrap=True)
    for reason in result.reasons:
        console.print(f"  {reason}", highlight=False, soft_wrap=True)
    if result.version is None and settings.federate.register_model:
        raise typer.Exit(1)
