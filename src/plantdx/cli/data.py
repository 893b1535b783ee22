"""``plantdx data check|split|stats``: what is in a class-folder dataset, and its leakage-free split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from plantdx.cli.app import ConfigOption, RootArgument, SetOption, console, data_app, progress_bar, settings_from
from plantdx.config import Settings
from plantdx.errors import PlantdxError


def _scan(settings: Settings) -> list[Any]:
    from plantdx.data.scan import scan_roots

    with progress_bar() as progress:
        task = progress.add_task("checking images", total=None)
        return scan_roots(
            settings.dataset, progress=lambda done, total: progress.update(task, completed=done, total=total)
        )


def _by_root_table(title: str, counts: dict[str, dict[str, int]], roots: list[str]) -> Table:
    """Classes down, roots across, and the total: what each root brings (a root may lack classes)."""
    table = Table(title=title)
    table.add_column("class")
    for root in roots:
        table.add_column(root, justify="right")
    table.add_column("total", justify="right")
    for name in sorted({c for per_root in counts.values() for c in per_root}):
        values = [counts[r].get(name, 0) for r in roots]
        table.add_row(name, *(str(v) if v else "-" for v in values), str(sum(values)))
    totals = [sum(counts[r].values()) for r in roots]
    table.add_row("[bold]total", *(f"[bold]{v}" for v in totals), f"[bold]{sum(totals)}")
    return table


@data_app.command("check")
def data_check(
    root: RootArgument = None,
    strict: Annotated[bool, typer.Option(help="Exit non-zero when any problem is found.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Decode every image and report corrupt, mislabelled, duplicate and unsupported files and tiny classes, per
    root and in total."""
    from plantdx.data.scan import duplicates_across

    settings = settings_from(config, set_, root)
    reports = _scan(settings)
    keys = [r.key for r in settings.dataset.root]
    counts = {key: report.class_counts for key, report in zip(keys, reports, strict=True)}
    console.print(_by_root_table(", ".join(f"{r.key} ({r.domain})" for r in settings.dataset.root), counts, keys))
    issues = [(key, i) for key, report in zip(keys, reports, strict=True) for i in report.issues]
    issues += [("", i) for i in duplicates_across(reports)]
    if not issues:
        console.print("[green]no problems found")
        return
    console.print(f"[bold red]{len(issues)} problems:")
    width = max(len(i.kind) for _, i in issues)
    for key, issue in issues:  # one line each, never wrapped: easy to grep
        where = f"{key}/{issue.path}" if key and len(keys) > 1 else issue.path
        console.print(f"  {issue.kind:<{width}}  {where}: {issue.detail}", soft_wrap=True, highlight=False)
    if strict:
        raise typer.Exit(1)


@data_app.command("split")
def data_split(
    root: RootArgument = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Manifest CSV to write.")] = Path("manifest.csv"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write the deterministic, leakage-free train/val/test manifest (path, label, split, sha256, group)."""
    from plantdx.data.split import check_no_leakage, manifest_for

    settings = settings_from(config, set_, root)
    dataset = settings.dataset.model_copy(update={"manifest": output})
    if output.exists():
        output.unlink()  # `data split` always makes a fresh one
    with progress_bar() as progress:
        task = progress.add_task("hashing and checking images", total=None)
        manifest = manifest_for(dataset, progress=lambda d, t: progress.update(task, completed=d, total=t))
    leaks = check_no_leakage(manifest)
    if leaks:  # would be a bug in the splitter: say so loudly
        raise PlantdxError(f"split leaks {len(leaks)} groups across splits, e.g. {leaks[0]}")
    _print_split_counts(manifest)
    console.print(f"wrote {output} ({len(manifest.rows)} images, sha256 {manifest.digest[:12]})")


def _print_split_counts(manifest: Any) -> None:
    table = Table()
    for col in ("class", "train", "val", "test", "total"):
        table.add_column(col, justify="left" if col == "class" else "right")
    totals = dict.fromkeys(("train", "val", "test"), 0)
    for name, counts in manifest.counts().items():
        table.add_row(name, *(str(counts[s]) for s in totals), str(sum(counts.values())))
        for s in totals:
            totals[s] += counts[s]
    table.add_row("[bold]total", *(f"[bold]{v}" for v in totals.values()), f"[bold]{sum(totals.values())}")
    console.print(table)


@data_app.command("stats")
def data_stats(root: RootArgument = None, config: ConfigOption = None, set_: SetOption = None) -> None:
    """Class balance, image sizes and formats of a dataset: per root and in total."""
    from plantdx.data.stats import dataset_stats

    settings = settings_from(config, set_, root)
    stats = []
    with progress_bar() as progress:
        task = progress.add_task("reading image headers", total=None)
        for r in settings.dataset.root:
            stats.append(
                dataset_stats(
                    r.path, domain=r.domain, progress=lambda d, t: progress.update(task, completed=d, total=t)
                )
            )
    keys = [r.key for r in settings.dataset.root]
    counts = {key: s.class_counts for key, s in zip(keys, stats, strict=True)}
    total = sum(s.images for s in stats)
    console.print(
        _by_root_table(f"{total} images in {len({c for s in stats for c in s.class_counts})} classes", counts, keys)
    )
    for key, s in zip(keys, stats, strict=True):
        console.print(f"[bold]{key}[/bold]: {s.images} images, {s.total_bytes / 2**20:.1f} MiB", highlight=False)
        console.print(f"  imbalance (largest / smallest class): {s.imbalance_ratio:.2f}")
        console.print(f"  formats: {s.formats}")
        console.print(f"  sizes (w x h): {s.sizes}")
        if s.unreadable or s.other_files:  # left out of the counts above: said, not dropped
            console.print(
                f"  [yellow]not counted: {s.unreadable} unreadable images, {s.other_files} files that are not "
                "images; `plantdx data check` lists them[/yellow]"
            )
