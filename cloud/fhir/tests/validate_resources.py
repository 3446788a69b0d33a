#!/usr/bin/env python3
"""Validate FHIR JSON resources produced by wardwatch-fhir.

Reads one JSON resource per line (blank lines ignored) from the file named by
the first argument, or from stdin when no argument (or "-") is given, and for
each resource:

* validates it with the R4B models of the PyPI package ``fhir.resources`` 8.x
  (wire-compatible with R4 for the resources Wardwatch produces), picking the
  model by ``resourceType``; extra or misspelt elements are rejected;
* checks every dateTime/instant element we emit against the FHIR R4 regexes
  (a time part must carry a timezone);
* for an Observation whose category is ``vital-signs``, checks the FHIR R4
  vital-signs profile explicitly (meta.profile, category, LOINC first, subject,
  effectiveDateTime, UCUM valueQuantity or UCUM components, and the specific
  heartrate/resprate/oxygensat/bodytemp/bp/... profiles it claims);
* for a searchset Bundle, checks links and entries (a search outcome entry
  needs no fullUrl), and validates every entry resource the same way;
* for a history Bundle, checks each entry's request, response status and
  ETag (``W/"<meta.versionId>"``, FHIR invariants bdl-3/bdl-4).

Exits 0 and prints a one-line summary when everything is valid; otherwise
prints one line per problem to stderr and exits 1 (also when no resource was
read at all).

* for the issue-6 device mapping: NEWS2 Observations (SNOMED code, survey
  category, integer total and sub-scores), RiskAssessment (probability 0..1,
  "not clinically validated" note), Provenance (model sha256), DetectedIssue
  (versionId = state changes), MedicationAdministration, DeviceMetric, Location
  and the CapabilityStatement (FHIR 4.0.1, SMART oauth-uris);
* with ``--expect=Type,Type`` fails unless each type appears at top level.

Usage:
    cargo run -p wardwatch-fhir --example dump_samples | python3 cloud/fhir/tests/validate_resources.py
    python3 cloud/fhir/tests/validate_resources.py resources.jsonl

Requires: pip install 'fhir.resources>=8,<9'
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SD = "http://hl7.org/fhir/StructureDefinition/"
VITAL_SIGNS_PROFILE = SD + "vitalsigns"

# Specific R4 vital-signs profiles: LOINC code and allowed UCUM units of
# valueQuantity (None: component-only panel).
SPECIFIC_PROFILES: dict[str, tuple[str, list[str] | None]] = {
    SD + "heartrate": ("8867-4", ["/min"]),
    SD + "resprate": ("9279-1", ["/min"]),
    SD + "oxygensat": ("2708-6", ["%"]),
    SD + "bodytemp": ("8310-5", ["Cel", "[degF]"]),
    SD + "bodyheight": ("8302-2", ["cm", "[in_i]"]),
    SD + "headcircum": ("9843-4", ["cm", "[in_i]"]),
    SD + "bodyweight": ("29463-7", ["kg", "[lb_av]", "g"]),
    SD + "bmi": ("39156-5", ["kg/m2"]),
    SD + "bp": ("85354-9", None),
}
BP_COMPONENTS = ("8480-6", "8462-4")

_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_TZ = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
# FHIR R4 dateTime and instant regexes.
DATETIME_RE = re.compile(
    rf"{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T{_TIME}{_TZ})?)?)?"
)
INSTANT_RE = re.compile(rf"{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T{_TIME}{_TZ}")
DATETIME_KEYS = {
    "effectiveDateTime", "valueDateTime", "time", "occurrenceDateTime", "identifiedDateTime",
    "occurredDateTime", "date", "start", "end",
}
INSTANT_KEYS = {"issued", "lastUpdated", "timestamp", "recorded"}
SNOMED = "http://snomed.info/sct"
NEWS2_SNOMED = "1104051000000101"
NOT_VALIDATED = "not clinically validated"

OBSERVATION_STATUSES = {
    "registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown",
}


class Problems:
    """Collects problems with the resource being checked."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, msg: str) -> None:
        self.items.append(f"{where}: {msg}")


def label(res: Any) -> str:
    if isinstance(res, dict):
        return f"{res.get('resourceType', '?')}/{res.get('id', '?')}"
    return "<not an object>"


def model_for(resource_type: str):
    """The fhir.resources R4B model class for a resourceType."""
    if not re.fullmatch(r"[A-Z][A-Za-z]+", resource_type):
        raise ValueError(f"bad resourceType {resource_type!r}")
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    return getattr(module, resource_type)


def check_model(res: dict, where: str, p: Problems) -> None:
    try:
        model = model_for(str(res.get("resourceType", "")))
    except (ImportError, AttributeError, ValueError) as e:
        p.add(where, f"unknown resourceType: {e}")
        return
    try:
        model.model_validate(res)
    except Exception as e:  # pydantic.ValidationError and friends
        p.add(where, "fhir.resources R4B validation failed:\n    " + str(e).replace("\n", "\n    "))


def check_dates(node: Any, where: str, p: Problems, path: str = "") -> None:
    """Recursively check dateTime/instant strings (a nested resource is checked on its own)."""
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else key
            if key == "resource" and isinstance(value, dict):
                continue
            if key in DATETIME_KEYS and isinstance(value, str) and not DATETIME_RE.fullmatch(value):
                p.add(where, f"{sub} = {value!r} is not a valid FHIR dateTime (a time needs a timezone)")
            elif key in INSTANT_KEYS and isinstance(value, str) and not INSTANT_RE.fullmatch(value):
                p.add(where, f"{sub} = {value!r} is not a valid FHIR instant")
            else:
                check_dates(value, where, p, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_dates(value, where, p, f"{path}[{i}]")


def codings(concept: Any) -> list[dict]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, dict)]


def has_coding(concept: Any, system: str, code: str) -> bool:
    return any(c.get("system") == system and c.get("code") == code for c in codings(concept))


def check_ucum_quantity(q: Any, where: str, path: str, p: Problems) -> None:
    if not isinstance(q, dict):
        p.add(where, f"{path} missing")
        return
    for key in ("value", "unit", "system", "code"):
        if q.get(key) in (None, ""):
            p.add(where, f"{path}.{key} is required by the vital-signs profile")
    if q.get("system") not in (None, UCUM):
        p.add(where, f"{path}.system is {q.get('system')!r}, expected {UCUM}")
    if isinstance(q.get("value"), bool) or not isinstance(q.get("value"), (int, float)):
        p.add(where, f"{path}.value {q.get('value')!r} is not a number")


def check_vital_signs(obs: dict, where: str, p: Problems) -> None:
    """Explicit checks of the FHIR R4 vital-signs profile (and its specific profiles)."""
    profiles = (obs.get("meta") or {}).get("profile") or []
    if VITAL_SIGNS_PROFILE not in profiles:
        p.add(where, f"meta.profile lacks {VITAL_SIGNS_PROFILE}")
    if obs.get("status") not in OBSERVATION_STATUSES:
        p.add(where, f"status {obs.get('status')!r} invalid")

    first = codings(obs.get("code"))[:1]
    if not first or first[0].get("system") != LOINC or not first[0].get("code"):
        p.add(where, "code.coding[0] must be a LOINC coding")

    subject = obs.get("subject")
    if not isinstance(subject, dict):
        p.add(where, "subject is required")
    else:
        ident = subject.get("identifier") or {}
        ref = subject.get("reference")
        if ref is not None and not str(ref).startswith("Patient/"):
            p.add(where, f"subject.reference {ref!r} is not a Patient reference")
        if ref is None and not (ident.get("system") and ident.get("value")):
            p.add(where, "subject needs a reference or an identifier with system and value")
        if subject.get("type") not in (None, "Patient"):
            p.add(where, f"subject.type {subject.get('type')!r} is not Patient")

    effective = obs.get("effectiveDateTime")
    if effective is None and obs.get("effectivePeriod") is None:
        p.add(where, "effectiveDateTime (or effectivePeriod) is required")
    elif isinstance(effective, str) and not re.match(r"^\d{4}-\d{2}-\d{2}", effective):
        p.add(where, "vs-1: effectiveDateTime must be precise to the day")

    value_keys = [k for k in obs if k.startswith("value")]
    components = obs.get("component") or []
    if not (value_keys or components or obs.get("hasMember") or obs.get("dataAbsentReason")):
        p.add(where, "vs-2: needs a value, components, hasMember or dataAbsentReason")
    for k in value_keys:
        if k != "valueQuantity":
            p.add(where, f"{k}: the vital-signs profile only allows valueQuantity")
    if "valueQuantity" in obs:
        check_ucum_quantity(obs["valueQuantity"], where, "valueQuantity", p)
    for i, comp in enumerate(components):
        cwhere = f"component[{i}]"
        if not codings(comp.get("code")):
            p.add(where, f"{cwhere}.code needs a coding")
        if "valueQuantity" in comp:
            check_ucum_quantity(comp["valueQuantity"], where, f"{cwhere}.valueQuantity", p)
        elif comp.get("dataAbsentReason") is None:
            p.add(where, f"vs-3: {cwhere} needs valueQuantity or dataAbsentReason")

    for profile in profiles:
        if profile not in SPECIFIC_PROFILES:
            continue
        loinc, units = SPECIFIC_PROFILES[profile]
        if not has_coding(obs.get("code"), LOINC, loinc):
            p.add(where, f"{profile} requires code LOINC {loinc}")
        if units is None:
            for code in BP_COMPONENTS:
                found = [c for c in components if has_coding(c.get("code"), LOINC, code)]
                if not found:
                    p.add(where, f"{profile} requires a component with LOINC {code}")
                for c in found:
                    unit = (c.get("valueQuantity") or {}).get("code")
                    if unit != "mm[Hg]":
                        p.add(where, f"{profile} component {code} unit {unit!r} is not mm[Hg]")
        else:
            unit = (obs.get("valueQuantity") or {}).get("code")
            if unit not in units:
                p.add(where, f"{profile} requires valueQuantity.code in {units}, got {unit!r}")


def check_news2(obs: dict, where: str, p: Problems) -> None:
    """A NEWS2 Observation: SNOMED total score, survey category, integer total 0..20 and sub-scores 0..3."""
    if not has_coding(obs.get("code"), SNOMED, NEWS2_SNOMED):
        p.add(where, f"NEWS2 code must be SNOMED CT {NEWS2_SNOMED}")
    if not any(has_coding(c, OBS_CATEGORY, "survey") for c in obs.get("category") or []):
        p.add(where, "NEWS2 category must be survey")
    total = obs.get("valueInteger")
    if not isinstance(total, int) or not 0 <= total <= 20:
        p.add(where, f"NEWS2 valueInteger {total!r} is not 0..20")
    subs = [c["valueInteger"] for c in obs.get("component") or [] if "valueInteger" in c]
    if any(not 0 <= v <= 3 for v in subs):
        p.add(where, f"NEWS2 sub-scores {subs} not all 0..3")
    for ref in obs.get("derivedFrom") or []:
        if not str(ref.get("reference", "")).startswith("Observation/"):
            p.add(where, f"derivedFrom {ref!r} is not an Observation reference")


def check_device_mapping(res: dict, where: str, p: Problems) -> None:
    """Rules of the issue-6 resources beyond what the R4B models check."""
    rtype = res["resourceType"]
    if rtype == "RiskAssessment":
        for pred in res.get("prediction") or []:
            prob = pred.get("probabilityDecimal")
            if not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
                p.add(where, f"probabilityDecimal {prob!r} is not 0..1")
        if not any(NOT_VALIDATED in (n.get("text") or "") for n in res.get("note") or []):
            p.add(where, "a model prediction must say it is not clinically validated")
    elif rtype == "Provenance":
        if not res.get("target"):
            p.add(where, "Provenance needs a target")
        hashes = [
            (a.get("who") or {}).get("identifier", {}).get("value", "") for a in res.get("agent") or []
        ]
        if not any(re.fullmatch(r"[0-9a-f]{64}", h or "") for h in hashes):
            p.add(where, "Provenance must name the model's sha256")
    elif rtype == "DetectedIssue":
        version = (res.get("meta") or {}).get("versionId")
        if version != str(1 + len(res.get("mitigation") or [])):
            p.add(where, f"versionId {version!r} != 1 + number of mitigations")
        if res.get("severity") not in ("high", "moderate", "low"):
            p.add(where, "an alarm needs a severity")
    elif rtype == "MedicationAdministration":
        if res.get("status") not in ("in-progress", "on-hold", "completed", "stopped"):
            p.add(where, f"status {res.get('status')!r} is not one Wardwatch uses")
        if not (res.get("request") or {}).get("identifier"):
            p.add(where, "request must name the order by identifier")
    elif rtype == "DeviceMetric":
        if not str((res.get("source") or {}).get("reference", "")).startswith("Device/"):
            p.add(where, "DeviceMetric.source must reference a Device")
        # Point-of-Care Device shape: the metric's parent is its channel Device.
        if not str((res.get("parent") or {}).get("reference", "")).startswith("Device/"):
            p.add(where, "DeviceMetric.parent must reference its channel Device")
    elif rtype == "Device" and res.get("parent"):
        # A VMD or channel: a type, a parent Device, and no patient or location of its own.
        if not str(res["parent"].get("reference", "")).startswith("Device/"):
            p.add(where, "Device.parent must reference a Device")
        if not (res.get("type") or {}).get("text"):
            p.add(where, "a VMD or channel Device needs a type")
        if res.get("patient") or res.get("location"):
            p.add(where, "a VMD or channel Device has no patient or location")
    elif rtype == "Location":
        bed = has_coding(res.get("physicalType"), "http://terminology.hl7.org/CodeSystem/location-physical-type", "bd")
        if bed and not res.get("partOf"):
            p.add(where, "a bed must be partOf its ward")
    elif rtype == "CapabilityStatement":
        if res.get("fhirVersion") != "4.0.1":
            p.add(where, "fhirVersion must be 4.0.1")
        sec = ((res.get("rest") or [{}])[0].get("security") or {}).get("extension") or []
        if not any(e.get("url", "").endswith("oauth-uris") for e in sec):
            p.add(where, "the SMART oauth-uris extension is missing")


def is_vital_signs(obs: dict) -> bool:
    return any(has_coding(cat, OBS_CATEGORY, "vital-signs") for cat in obs.get("category") or [])


def check_resource(res: Any, where: str, p: Problems) -> None:
    if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
        p.add(where, "not a JSON object with a resourceType")
        return
    check_model(res, where, p)
    check_dates(res, where, p)
    rtype = res["resourceType"]
    check_device_mapping(res, where, p)
    if rtype == "Observation":
        if has_coding(res.get("code"), SNOMED, NEWS2_SNOMED):
            check_news2(res, where, p)
        if is_vital_signs(res):
            check_vital_signs(res, where, p)
        elif VITAL_SIGNS_PROFILE in ((res.get("meta") or {}).get("profile") or []):
            p.add(where, "claims the vital-signs profile without the vital-signs category")
    elif rtype == "Bundle":
        if res.get("type") == "searchset":
            relations = [link.get("relation") for link in res.get("link") or []]
            if "self" not in relations:
                p.add(where, "searchset Bundle needs a self link")
        for i, entry in enumerate(res.get("entry") or []):
            ewhere = f"{where} entry[{i}]"
            mode = (entry.get("search") or {}).get("mode")
            # A search outcome (an OperationOutcome about the search itself) has no identity to give.
            if not entry.get("fullUrl") and mode != "outcome":
                p.add(ewhere, "fullUrl missing")
            if res.get("type") == "history":
                # bdl-3 / bdl-4: a history entry says how the version came about and its ETag.
                request, response = entry.get("request") or {}, entry.get("response") or {}
                if request.get("method") not in ("POST", "PUT", "DELETE") or not request.get("url"):
                    p.add(ewhere, "history entry needs request.method and request.url")
                vid = ((entry.get("resource") or {}).get("meta") or {}).get("versionId")
                if not vid:
                    p.add(ewhere, "history entry resource needs meta.versionId")
                elif response.get("etag") != f'W/"{vid}"':
                    p.add(ewhere, f"response.etag {response.get('etag')!r} is not W/\"{vid}\"")
                if not str(response.get("status", "")).startswith(("200", "201")):
                    p.add(ewhere, "history entry needs response.status")
            if res.get("type") == "searchset" and (entry.get("search") or {}).get("mode") not in (
                "match", "include", "outcome",
            ):
                p.add(ewhere, "search.mode missing or invalid")
            if "resource" not in entry:
                p.add(ewhere, "resource missing")
            else:
                check_resource(entry["resource"], f"{ewhere} ({label(entry['resource'])})", p)
    elif rtype == "OperationOutcome":
        if not res.get("issue"):
            p.add(where, "OperationOutcome needs at least one issue")


def main(argv: list[str]) -> int:
    expect: list[str] = []
    if len(argv) > 1 and argv[1].startswith("--expect="):
        expect = [t for t in argv[1][len("--expect="):].split(",") if t]
        argv = [argv[0]] + argv[2:]
    if len(argv) > 2:
        print(f"usage: {argv[0]} [--expect=Type,Type...] [FILE|-]", file=sys.stderr)
        return 2
    if len(argv) == 2 and argv[1] != "-":
        with open(argv[1], encoding="utf-8") as f:
            lines = f.read().splitlines()
    else:
        lines = sys.stdin.read().splitlines()

    p = Problems()
    counts: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            res = json.loads(line)
        except json.JSONDecodeError as e:
            p.add(f"line {n}", f"not valid JSON: {e}")
            continue
        rtype = res.get("resourceType", "?") if isinstance(res, dict) else "?"
        counts[rtype] = counts.get(rtype, 0) + 1
        check_resource(res, f"line {n} ({label(res)})", p)

    total = sum(counts.values())
    for t in expect:
        if counts.get(t, 0) == 0:
            p.add("input", f"no {t} resource was given (--expect)")
    if total == 0 and not p.items:
        print("FAIL: no resources read", file=sys.stderr)
        return 1
    if p.items:
        print(f"FAIL: {len(p.items)} problem(s) in {total} resource(s):", file=sys.stderr)
        for item in p.items:
            print(f"  {item}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"OK: {total} resource(s) valid ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
