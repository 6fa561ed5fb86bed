"""``ctagg archive-digest | verify-archive | retention``: the central archive's own signed digest
chain, its end-to-end verification, and its expiry."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from aggregator.cli._common import NO_SINKS, config_arg, json_arg, load_or_exit, open_state
from aggregator.cli._errors import EXIT_OK, EXIT_PARTIAL, EXIT_PROBLEMS

if TYPE_CHECKING:
    from aggregator.archive.retention import RetentionReport


def add_archive_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    json_arg(p)


def run_archive_digest(args: argparse.Namespace) -> int:
    """Write the archive digests due now (the service does this hourly)."""
    import asyncio

    from aggregator.archive.digests import write_archive_digests

    settings = load_or_exit(args.config, NO_SINKS)
    state = open_state(settings, "ctagg archive-digest")
    try:
        rep = asyncio.run(write_archive_digests(settings, state))
    finally:
        state.close()
    out = {"digests": rep.digests, "objects": rep.objects, "retained": rep.retained}
    print(
        json.dumps(out)
        if args.json
        else f"{len(rep.digests)} digest(s), {rep.objects} object(s), {rep.retained} retained"
    )
    return 0


def add_verify_args(p: argparse.ArgumentParser) -> None:
    add_archive_args(p)
    p.add_argument(
        "--digests-only", action="store_true", help="check signatures and chain, not objects"
    )


def run_verify_archive(args: argparse.Namespace) -> int:
    import asyncio

    from aggregator.archive.digest_keys import client_and_key
    from aggregator.archive.verify import verify_archive
    from aggregator.aws.clients import Aws, ClientPool

    settings = load_or_exit(args.config, NO_SINKS)
    state = open_state(settings, "ctagg verify-archive", read_only=True)

    async def go() -> Any:
        async with ClientPool(Aws(settings.aws)) as pool:
            s3, public_key = await client_and_key(settings, pool, for_signing=False)
            return await verify_archive(
                s3,
                settings.archive,
                settings.integrity.archive_digest,
                public_key,
                state=state,
                check_objects=not args.digests_only,
            )

    try:
        rep = asyncio.run(go())
    finally:
        state.close()
    if args.json:
        print(json.dumps(rep.as_dict(), sort_keys=True))
    else:
        print(
            f"{'OK' if rep.ok else 'FAILED'}: {rep.digests} digest(s), "
            f"{rep.objects_ok}/{rep.objects} object(s) verified, "
            f"{rep.undigested_ledger_rows} ledger row(s) not digested yet, "
            f"{len(rep.expired)} expired by retention"
        )
        for label, items in (
            ("signature invalid", rep.signature_invalid),
            ("chain broken", rep.chain_broken),
            ("modified", rep.modified),
            ("missing", rep.missing),
            ("unreadable", rep.unreadable),
            ("ledger mismatch", rep.ledger_mismatch),
        ):
            for item in items:
                print(f"  {label}: {item}")
        if rep.head_problem:
            print(f"  head: {rep.head_problem}")
    return EXIT_OK if rep.ok else EXIT_PROBLEMS


def add_retention_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--dry-run", action="store_true", help="list what would go; change nothing")
    json_arg(p, "print the report as JSON")


def run_retention(args: argparse.Namespace) -> int:
    import asyncio

    from aggregator.service.retention import run_once

    settings = load_or_exit(args.config, NO_SINKS)
    report = asyncio.run(run_once(settings, dry_run=args.dry_run))
    if args.json:
        print(json.dumps(report.as_dict(), default=str))
    else:
        print(render_retention(report))
    return EXIT_OK if report.ok else EXIT_PARTIAL


def render_retention(report: RetentionReport, limit: int = 50) -> str:
    """Human-readable summary for ``ctagg retention``."""
    from aggregator.archive.retention import RULE_ID

    verb = "would delete" if report.dry_run else "deleted"
    lines = []
    if report.mode is None:
        lines.append(f"archive: skipped ({report.skipped.get('archive', '')})")
    elif report.mode == "lifecycle":
        state = "up to date"
        if report.lifecycle_changed:
            state = "would be installed" if report.dry_run else "installed"
        lines.append(f"archive: lifecycle rule {RULE_ID} {state}: {report.lifecycle_rule}")
    else:
        lines.append(
            f"archive: cutoff {report.cutoff_day}; listed {report.listed}, expired "
            f"{report.expired}, {verb} {len(report.deleted)}, locked {len(report.locked)}, "
            f"kept for forwarders {report.pending_forward}, foreign keys ignored {report.foreign}"
        )
        if not report.listing_complete:
            lines.append("archive: listing incomplete: nothing deleted")
        for key in report.deleted[:limit]:
            lines.append(f"  {verb}: {key}")
        if len(report.deleted) > limit:
            lines.append(f"  ... and {len(report.deleted) - limit} more")
        for item in report.locked[:limit]:
            lines.append(f"  locked (kept): {item['key']} ({item['reason']})")
    for table, n in report.pruned.items():
        lines.append(f"state: {table}: {verb} {n}")
    for what, why in report.skipped.items():
        if what != "archive":
            lines.append(f"state: {what}: skipped ({why})")
    for err in report.errors:
        lines.append(f"error: {err}")
    return "\n".join(lines)
