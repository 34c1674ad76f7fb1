"""``python -m bench``: run benchmark cells, then regenerate docs/benchmarks.md.

    .venv/bin/python -m bench                                   # everything not yet done
    .venv/bin/python -m bench --datasets sst2 --systems fenlei-minilm,hf-trainer-minilm \
        --train-limit 4000 --timeout 1800
    .venv/bin/python -m bench --report-only
    .venv/bin/python -m bench --datasets imdb --systems fenlei-minilm --not-run "time box"
"""

from __future__ import annotations

import argparse
import json

from bench import harness, report


def _names(raw: str | None, known: dict[str, object]) -> list[str]:
    if not raw:
        return list(known)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: unknown name(s) {unknown}; choose from {', '.join(known)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", help="comma-separated; default all")
    parser.add_argument("--systems", help="comma-separated; default all")
    parser.add_argument("--force", action="store_true", help="re-run cells already done")
    parser.add_argument("--timeout", type=float, help="seconds per cell (time box)")
    parser.add_argument("--train-limit", type=int, help="use only the first N training rows")
    parser.add_argument(
        "--option", action="append", default=[], help="extra system option KEY=JSON (repeatable)"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads per cell (1 on a busy machine)"
    )
    parser.add_argument("--not-run", metavar="REASON", help="record the cells as not run")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the report")
    args = parser.parse_args()
    datasets = _names(args.datasets, harness.DATASETS)  # type: ignore[arg-type]
    systems = _names(args.systems, harness.SYSTEMS)  # type: ignore[arg-type]
    extra = {}
    for item in args.option:
        key, _, raw = item.partition("=")
        try:
            extra[key] = json.loads(raw)
        except json.JSONDecodeError:
            extra[key] = raw
    if args.not_run:
        for d in datasets:
            for s in systems:
                if harness.SYSTEMS[s].applies(harness.DATASETS[d]):
                    harness.mark_not_run(d, s, args.not_run)
    elif not args.report_only:
        harness.run(
            datasets,
            systems,
            force=args.force,
            timeout=args.timeout,
            train_limit=args.train_limit,
            extra=extra or None,
            threads=args.threads,
        )
    path = report.write_report()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
