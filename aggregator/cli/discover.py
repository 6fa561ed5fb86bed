"""``ctagg discover | doctor``: what would be collected, and whether every account × region
can be read (assume, list, read) and the central bucket written."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TextIO

from aggregator.cli._common import config_arg, json_arg, load_or_exit
from aggregator.cli._errors import EXIT_OK, EXIT_PARTIAL, EXIT_PROBLEMS

if TYPE_CHECKING:
    from aggregator.aws.inventory import Inventory
    from aggregator.integrity.doctor import DoctorReport, Row


def add_discover_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    json_arg(p, "print one JSON object")


def run_discover(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """0 when every account was discovered, 4 (partial) when some failed; a discovery that
    cannot run at all raises (3, access)."""
    import asyncio

    from aggregator.aws.clients import Aws
    from aggregator.aws.credentials import CredentialBroker
    from aggregator.aws.discovery import discover

    settings = load_or_exit(args.config)
    stream = out or sys.stdout

    async def go() -> Inventory:
        aws = Aws(settings.aws)
        return await discover(settings, CredentialBroker(settings, aws), aws)

    inv = asyncio.run(go())
    if args.json:
        stream.write(json.dumps(inventory_dict(inv), indent=2, sort_keys=True) + "\n")
    else:
        print_inventory(inv, stream)
    return EXIT_PARTIAL if inv.failures else EXIT_OK


def inventory_dict(inv: Inventory) -> dict[str, Any]:
    """A JSON-ready view of an inventory (no email addresses)."""
    return {
        "organization_id": inv.organization_id,
        "accounts": [
            {
                "id": a.id,
                "name": a.name,
                "ou_path": a.ou_path,
                "ou_ids": list(a.ou_ids),
                "tags": dict(a.tags),
                "regions": inv.regions.get(a.id),
            }
            for a in inv.accounts
        ],
        "trails": [asdict(t) for t in inv.trails],
        "sources": [asdict(s) for s in inv.sources],
        "failures": [asdict(f) for f in inv.failures],
    }


def print_inventory(inv: Inventory, out: TextIO) -> None:
    def p(line: str = "") -> None:
        print(line, file=out)

    p(f"organization: {inv.organization_id or '-'}")
    p(f"accounts ({len(inv.accounts)}):")
    for a in inv.accounts:
        regions = inv.regions.get(a.id)
        shown = ", ".join(regions) if regions is not None else "(unknown: see failures)"
        p(f"  {a.id}  {a.name or '-'}  {a.ou_path or '-'}")
        p(f"      regions: {shown}")
    p(f"trails ({len(inv.trails)}):")
    for t in inv.trails:
        kind = "organization" if t.is_organization else "account"
        scope = "multi-region" if t.is_multi_region else t.home_region
        p(f"  {t.arn}  {kind}, {scope}  -> s3://{t.bucket}/{t.key_prefix}")
    p(f"sources ({len(inv.sources)}):")
    for s in inv.sources:
        p(f"  s3://{s.source_id}  reader={s.reader_account_id or 'base identity'}")
    if inv.failures:
        p(f"failures ({len(inv.failures)}):")
        for f in inv.failures:
            where = f" {f.region}" if f.region else ""
            p(f"  {f.account_id}{where}  {f.stage}: {f.reason}")


def add_doctor_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    json_arg(p, "print the report as JSON")


def run_doctor(args: argparse.Namespace) -> int:
    import asyncio

    from aggregator.integrity import doctor

    settings = load_or_exit(args.config)
    report = asyncio.run(doctor.run_live(settings))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        from rich.console import Console

        console = Console()
        console.print(render_table(report))
        for line in render_text(report):
            console.print(line)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def render_table(report: DoctorReport) -> Any:
    """A rich Table of the report (one row per account × region)."""
    from rich.table import Table

    table = Table(title="ctagg doctor: access per account × region")
    for col in (
        "account",
        "region",
        "reader",
        "assume",
        "list trail",
        "read object",
        "write central",
        "problem / missing permission",
    ):
        table.add_column(col)

    def cell(row: Row, name: str) -> str:
        c = row.check(name)
        if c is None:
            return "-"
        return "[green]ok[/green]" if c.ok else "[red]FAIL[/red]"

    central = "[green]ok[/green]" if report.central.ok else "[red]FAIL[/red]"
    for row in report.rows:
        problems = [
            f"{c.name}: {c.detail}" + (f" → grant {c.missing}" if c.missing else "")
            for c in row.checks
            if not c.ok
        ]
        table.add_row(
            row.account_id,
            row.region,
            row.reader,
            cell(row, "assume"),
            cell(row, "list"),
            cell(row, "read"),
            central,
            "\n".join(problems),
        )
    return table


def render_text(report: DoctorReport) -> Sequence[str]:
    c = report.central
    lines = [
        f"central archive write: {'ok' if c.ok else 'FAIL'}: {c.detail}"
        + (f" → grant {c.missing}" if c.missing else "")
    ]
    failing = sum(1 for r in report.rows if not r.ok)
    lines.append(f"{len(report.rows)} account × region rows, {failing} failing")
    return lines
