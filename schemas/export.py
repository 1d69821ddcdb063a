"""Export the event envelope's JSON Schema: ``python -m schemas.export [path]``."""

import sys
from pathlib import Path

import orjson

from schemas.events import EventEnvelope

SCHEMA_FILE = Path(__file__).with_name("event-envelope.schema.json")


def envelope_json_schema() -> bytes:
    schema = EventEnvelope.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_FILE
    target.write_bytes(envelope_json_schema())
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
