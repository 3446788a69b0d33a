#!/usr/bin/env python3
"""MQTT interoperability check for the Wardwatch edge's MQTT source, with a third-party client.

Publishes vital-signs and infusion payloads with paho-mqtt 2.x (QoS 1, waiting for each PUBACK) to a broker,
after validating every payload against the JSON Schemas in docs/schemas/ with the `jsonschema` package (draft
2020-12). It also checks that the schemas refuse a few bad payloads, so schema and edge stay equally strict.

    python3 tests/python/mqtt_interop.py HOST PORT PREFIX [--ward 7A] [--bed 3] [--device-suffix X]

Prints one JSON line per published message ({"topic", "payload"}) and a final {"published": N} line on stdout.
Exit codes: 0 all published; 1 failure (schema, broker, timeout); 77 a required package is missing (skip).
The edge test `edge/tests/mqtt_source.rs` runs this script and checks the edge accepted what it published.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

SKIP = 77

try:
    import jsonschema
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError as e:  # pragma: no cover - exercised when the packages are absent
    print(f"SKIPPED: missing Python package ({e}); pip install paho-mqtt jsonschema", file=sys.stderr)
    sys.exit(SKIP)

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
MEASURED_MS = 1_772_352_900_000  # 2026-03-01T08:15:00Z


def validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def messages(ward: str, bed: str, suffix: str) -> list[tuple[str, str, dict]]:
    """(kind, device_id, payload) for each message to publish."""
    monitor = f"py-mon-{suffix}"
    pump = f"py-pump-{suffix}"
    return [
        (
            "vitals",
            monitor,
            {
                "patient_id": "MRN-PY1",
                "measured_at": MEASURED_MS,
                "samples": [
                    {"mdc": 147842, "value": 88, "unit": "bpm", "id": "py-1"},
                    {"mdc": 150456, "value": 94, "unit": "%", "quality": ["low_signal"]},
                    {"mdc": 150364, "value": 100.4, "unit": "[degF]"},
                    {
                        "mdc": 150020,
                        "unit": "mmHg",
                        "components": [{"mdc": 150021, "value": 131}, {"mdc": 150022, "value": 84}],
                    },
                    {"mdc": 192512, "enumerated": "A"},
                ],
            },
        ),
        (
            "vitals",
            monitor,
            {
                "patient_id": "MRN-PY1",
                "ward": ward,
                "bed": bed,
                "measured_at": "2026-03-01T08:16:00Z",
                "samples": [{"mdc": 151562, "value": 18, "unit": "/min"}],
            },
        ),
        (
            "infusion",
            pump,
            {
                "patient_id": "MRN-PY1",
                "order_id": "ORD-PY-7",
                "medication": "Sodium chloride 0.9% 1000 mL",
                "prescribed_rate_ml_h": 125,
                "drop_factor_gtt_per_ml": 20,
                "drops_per_min": 42,
                "volume_infused_ml": 250,
                "volume_remaining_ml": 750,
                "state": "running",
                "measured_at": MEASURED_MS,
            },
        ),
    ]


def check_schemas_refuse_bad_payloads(vital: jsonschema.protocols.Validator, infusion: jsonschema.protocols.Validator) -> None:
    bad_vitals = [
        {"patient_id": "MRN1", "measured_at": MEASURED_MS, "samples": []},
        {"patient_id": "MRN1", "measured_at": MEASURED_MS, "samples": [{"mdc": 147842, "value": "NaN", "unit": "/min"}]},
        {"patient_id": "MRN1", "measured_at": MEASURED_MS, "samples": [{"mdc": 147842, "value": 1, "colour": "red"}]},
        {"patient_id": "MRN1", "measured_at": MEASURED_MS, "samples": [{"mdc": 147842}]},
        {"patient_id": "MRN 1", "measured_at": MEASURED_MS, "samples": [{"mdc": 147842, "value": 1}]},
        {"patient_id": "MRN1", "samples": [{"mdc": 147842, "value": 1}]},
    ]
    # jsonschema checks "format": "date-time" only when rfc3339-validator is installed.
    if "date-time" in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers:
        bad_vitals.append({"patient_id": "MRN1", "measured_at": "yesterday", "samples": [{"mdc": 147842, "value": 1}]})
    bad_infusions = [
        {"patient_id": "MRN1", "order_id": "O", "prescribed_rate_ml_h": 1, "volume_infused_ml": 0,
         "volume_remaining_ml": 0, "state": "leaking", "measured_at": MEASURED_MS, "measured_rate_ml_h": 1},
        {"patient_id": "MRN1", "order_id": "O", "prescribed_rate_ml_h": 1, "volume_infused_ml": 0,
         "volume_remaining_ml": 0, "state": "running", "measured_at": MEASURED_MS},
        {"patient_id": "MRN1", "order_id": "O", "prescribed_rate_ml_h": -1, "volume_infused_ml": 0,
         "volume_remaining_ml": 0, "state": "running", "measured_at": MEASURED_MS, "measured_rate_ml_h": 1},
    ]
    for v, bads in ((vital, bad_vitals), (infusion, bad_infusions)):
        for bad in bads:
            if v.is_valid(bad):
                raise SystemExit(f"schema accepted a payload it must refuse: {json.dumps(bad)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("prefix", help="topic prefix, e.g. wardwatch/v1")
    ap.add_argument("--ward", default="7A")
    ap.add_argument("--bed", default="3")
    ap.add_argument("--device-suffix", default=uuid.uuid4().hex[:8])
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the connection and each PUBACK")
    args = ap.parse_args()

    vital = validator("mqtt-vital.schema.json")
    infusion = validator("mqtt-infusion.schema.json")
    check_schemas_refuse_bad_payloads(vital, infusion)

    planned = []
    for kind, device, payload in messages(args.ward, args.bed, args.device_suffix):
        (vital if kind == "vitals" else infusion).validate(payload)
        topic = f"{args.prefix}/{args.ward}/{args.bed}/{device}/{kind}"
        planned.append((topic, json.dumps(payload, separators=(",", ":"))))

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"wardwatch-interop-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    connected = {"rc": None}

    def on_connect(_client, _userdata, _flags, reason_code, _properties):
        connected["rc"] = reason_code

    client.on_connect = on_connect
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    try:
        deadline = time.monotonic() + args.timeout
        while connected["rc"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if connected["rc"] is None or connected["rc"].is_failure:
            print(f"could not connect to {args.host}:{args.port}: {connected['rc']}", file=sys.stderr)
            return 1
        for topic, body in planned:
            info = client.publish(topic, body, qos=1)
            info.wait_for_publish(timeout=args.timeout)
            if not info.is_published():
                print(f"no PUBACK for {topic} within {args.timeout}s", file=sys.stderr)
                return 1
            print(json.dumps({"topic": topic, "payload": json.loads(body)}), flush=True)
    finally:
        client.disconnect()
        client.loop_stop()
    print(json.dumps({"published": len(planned), "paho_mqtt": paho.mqtt.__version__}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
