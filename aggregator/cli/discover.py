"""``ctagg discover | doctor``: what would be collected, and whether every account × region
can be read (assume, list, read) and the central bucket written."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TextIO

from aggregator.cli._common import (
    NO_SINKS,
    config_arg,
    json_arg,
    json_line,
    load_or_exit,
    source_label,
)
from aggregator.cli._errors import EXIT_OK, EXIT_PARTIAL, EXIT_PROBLEMS
from aggregator.cli._table import Column

if TYPE_CHECKING:
    from rich.console import Console

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

    settings = load_or_exit(args.config, NO_SINKS)
    stream = out or sys.stdout

    async def go() -> Inventory:
        aws = Aws(settings.aws)
        return await discover(settings, CredentialBroker(settings, aws), aws)

    inv = asyncio.run(go())
    if args.json:
        stream.write(json.dumps(inventory_dict(inv), sort_keys=True) + "\n")
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
        "warnings": list(inv.warnings),
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
    for w in inv.warnings:
        p(f"warning: {w}")


def add_doctor_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    json_arg(p, "print the report as JSON")


def run_doctor(args: argparse.Namespace) -> int:
    import asyncio

    from aggregator.integrity import doctor

    settings = load_or_exit(args.config, NO_SINKS)
    report = asyncio.run(doctor.run_live(settings))
    if args.json:
        print(json_line(report.as_dict()))
    else:
        from aggregator.cli._table import console_for

        print_doctor(console_for(), report)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


DOCTOR_COLUMNS = (
    Column("account", 0, elide=False),
    Column("region", 1, elide=False),
    Column("assume", 2, elide=False),
    Column("list", 3, elide=False),
    Column("read", 4, elide=False),
    Column("source", 6, min_width=10),
    Column("reader", 7, min_width=12),
    Column("problem / missing permission", 5, min_width=24, wrap=True),
)


def print_doctor(console: Console, report: DoctorReport) -> None:
    """The table (one row per account × region; fitted to the terminal, whole on a pipe) and
    the summary lines (central write, accounts whose role cannot be assumed, failing count)."""
    from aggregator.cli._table import esc, print_table

    def cell(row: Row, name: str) -> str:
        c = row.check(name)
        if c is None:
            return "-"
        return "[green]ok[/green]" if c.ok else "[red]FAIL[/red]"

    rows = []
    for row in report.rows:
        problems = [
            f"{c.name}: {c.detail}" + (f" → grant {c.missing}" if c.missing else "")
            for c in row.checks
            if not c.ok
        ]
        rows.append(
            [
                row.account_id,
                row.region,
                cell(row, "assume"),
                cell(row, "list"),
                cell(row, "read"),
                source_label(row.bucket, row.prefix),
                row.reader,
                esc("\n".join(problems)),
            ]
        )
    print_table(console, DOCTOR_COLUMNS, rows, title="ctagg doctor: access per account × region")
    for line in render_text(report):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def render_text(report: DoctorReport) -> Sequence[str]:
    c = report.central
    lines = [
        f"central archive write: {'ok' if c.ok else 'FAIL'}: {c.detail}"
        + (f" → grant {c.missing}" if c.missing else "")
    ]
    if report.roles_denied:
        lines.append(
            f"role cannot be assumed in {len(report.roles_denied)} account(s): "
            + ", ".join(report.roles_denied)
        )
    failing_rows = sum(1 for r in report.rows if not r.ok)
    parts = [f"{failing_rows} of {len(report.rows)} account × region rows"]
    if not c.ok:
        parts.append("the central archive write")
    lines.append(f"{report.failing} failing: " + " and ".join(parts))
    lines.extend(f"warning: {w}" for w in report.warnings)
    return lines
