#!/usr/bin/env python3
"""Validates JSON messages, one per line, against an rxgate JSON Schema in docs/schemas/.

    validate.py SCHEMA_NAME < messages.jsonl
    validate.py --invalid SCHEMA_NAME < malformed.jsonl

SCHEMA_NAME is a file name in the schemas folder, with or without `.json` (`telemetry`,
`device-telemetry.json`). Each non-blank line must be one JSON document. Errors are printed as
`line N: <where>: <what>`.

Exit status: 0 when every line is valid (with --invalid: when every line is refused), 1 when
some are not, 2 when the validator itself cannot work (usage, missing schema, broken schema,
date-time checking unavailable), so a broken setup never passes for a refusal.

Needs the PyPI packages jsonschema, referencing and rfc3339-validator (without the latter,
jsonschema silently skips `format: date-time`; this script refuses to run instead).
"""

import argparse
import json
import sys
from pathlib import Path

SCHEMAS = Path(__file__).resolve().parent.parent.parent / "docs" / "schemas"


def fail_setup(message):
    print(f"validate.py: {message}", file=sys.stderr)
    sys.exit(2)


def load_validator(schemas_dir, name):
    try:
        from jsonschema import Draft202012Validator, FormatChecker
        from referencing import Registry, Resource
    except ImportError as e:
        fail_setup(f"{e}; install with: pip install jsonschema referencing rfc3339-validator")

    format_checker = FormatChecker()
    if "date-time" not in format_checker.checkers:
        fail_setup("date-time format checking is unavailable; pip install rfc3339-validator")

    # Schemas refer to each other by file name ("envelope.json"); none has an $id, so the
    # references resolve the same way here as relative file references do in AsyncAPI tools.
    registry = Registry()
    schemas = {}
    for path in sorted(schemas_dir.glob("*.json")):
        try:
            contents = json.loads(path.read_text(encoding="utf-8"))
            Draft202012Validator.check_schema(contents)
        except Exception as e:  # noqa: BLE001 - any problem with a schema file is a setup error
            fail_setup(f"{path}: not a valid draft 2020-12 schema: {e}")
        schemas[path.name] = contents
        registry = registry.with_resource(path.name, Resource.from_contents(contents))

    file_name = name if name.endswith(".json") else f"{name}.json"
    if file_name not in schemas:
        fail_setup(f"no schema {file_name!r} in {schemas_dir} (have: {', '.join(sorted(schemas))})")
    return Draft202012Validator(schemas[file_name], registry=registry, format_checker=format_checker)


def where(error):
    path = "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
    return f"${path}" if path else "$"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("schema", help="schema file name in the schemas folder, e.g. telemetry")
    parser.add_argument("--invalid", action="store_true", help="expect every line to be refused")
    parser.add_argument("--schemas", type=Path, default=SCHEMAS, help=f"schemas folder (default {SCHEMAS})")
    args = parser.parse_args()

    validator = load_validator(args.schemas, args.schema)
    problems = 0
    checked = 0
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        checked += 1
        try:
            message = json.loads(line)
        except json.JSONDecodeError as e:
            errors = [f"not JSON: {e}"]
        else:
            errors = [
                f"{where(e)}: {e.message}"
                for e in sorted(validator.iter_errors(message), key=lambda e: list(e.absolute_path))
            ]
        if args.invalid:
            if not errors:
                problems += 1
                print(f"line {number}: accepted by {args.schema}, but it should be refused: {line.strip()}")
        elif errors:
            problems += 1
            for error in errors:
                print(f"line {number}: {error}")

    if checked == 0:
        fail_setup("no messages on standard input")
    verdict = "refused" if args.invalid else "valid"
    print(f"{checked - problems} of {checked} message(s) {verdict} ({args.schema})", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
