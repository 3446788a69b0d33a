#!/usr/bin/env python3
"""An EHR acting as a SMART Backend Services client of Wardwatch, with libraries nobody here wrote.

* PyJWT (with cryptography) signs the client assertions, RS384 and ES384;
* requests reads /.well-known/smart-configuration and posts to the token endpoint;
* fhirpy (SyncFHIRClient) searches Observations for a patient by code and date range with a small _count and
  follows every `next` link to the end, then searches the audit trail as an administrator;
* fhir.resources (R4B models) validates the AuditEvents it receives.

Driven by tests/tests/smart.rs, which starts a real cloud, registers the clients' public keys and writes the JSON
file named by the first argument:

    {"fhir_base": ..., "ca_cert": ...,
     "clients": [{"client_id", "private_key" (PEM path), "alg", "kid"}, ...],
     "admin": {"client_id", "private_key", "alg", "kid"},
     "patient": MRN, "code": "system|code", "date_ge": ..., "date_le": ..., "expected_ids": [Observation ids]}

Prints one line starting with OK and exits 0 when every check holds; otherwise raises (exit 1).
Requires: pip install -r tests/python/requirements.txt
"""

from __future__ import annotations

import json
import sys
import time
import uuid

import jwt
import requests
from fhir.resources.R4B.auditevent import AuditEvent
from fhirpy import SyncFHIRClient

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def assertion(client: dict, token_endpoint: str) -> str:
    with open(client["private_key"], "rb") as f:
        key = f.read()
    now = int(time.time())
    claims = {
        "iss": client["client_id"],
        "sub": client["client_id"],
        "aud": token_endpoint,
        "exp": now + 240,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm=client["alg"], headers={"kid": client["kid"]})


def token(cfg: dict, discovery: dict, client: dict, scope: str) -> tuple[str, str]:
    """Returns (access token, the assertion used)."""
    signed = assertion(client, discovery["token_endpoint"])
    r = requests.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signed,
            "scope": scope,
        },
        verify=cfg["ca_cert"],
        timeout=30,
    )
    assert r.status_code == 200, f"token for {client['client_id']}: {r.status_code} {r.text}"
    body = r.json()
    assert body["token_type"].lower() == "bearer", body
    assert 0 < body["expires_in"] <= 3600, body
    assert set(body["scope"].split()) == set(scope.split()), body
    assert "no-store" in r.headers.get("Cache-Control", ""), r.headers
    return body["access_token"], signed


def main() -> None:
    cfg = json.load(open(sys.argv[1]))
    ca = cfg["ca_cert"]
    base = cfg["fhir_base"]

    d = requests.get(f"{base}/.well-known/smart-configuration", verify=ca, timeout=30)
    assert d.status_code == 200, d.text
    discovery = d.json()
    for alg in ("RS384", "ES384"):
        assert alg in discovery["token_endpoint_auth_signing_alg_values_supported"], discovery
    assert "client_credentials" in discovery["grant_types_supported"], discovery
    assert "private_key_jwt" in discovery["token_endpoint_auth_methods_supported"], discovery
    for cap in ("client-confidential-asymmetric", "permission-v2"):
        assert cap in discovery["capabilities"], discovery

    expected = sorted(cfg["expected_ids"])
    assert expected, "the driver must give a search with results"
    searched = 0
    for client in cfg["clients"]:
        access, used = token(cfg, discovery, client, "system/Observation.rs")
        fhir = SyncFHIRClient(base, authorization=f"Bearer {access}", requests_config={"verify": ca})
        found = (
            fhir.resources("Observation")
            .search(
                patient=cfg["patient"],
                code=cfg["code"],
                date=[f"ge{cfg['date_ge']}", f"le{cfg['date_le']}"],
            )
            .limit(7)  # small pages: the search must follow several next links
            .fetch_all()
        )
        ids = sorted(o["id"] for o in found)
        assert ids == expected, f"{client['client_id']}: got {len(ids)} Observations, expected {len(expected)}"
        system, code = cfg["code"].split("|")
        for o in found:
            assert o["subject"]["identifier"]["value"] == cfg["patient"], o["subject"]
            assert any(c["system"] == system and c["code"] == code for c in o["code"]["coding"]), o["code"]
        searched += len(found)

        # The same assertion a second time is a replay.
        r = requests.post(
            discovery["token_endpoint"],
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": used,
                "scope": "system/Observation.rs",
            },
            verify=ca,
            timeout=30,
        )
        assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text

    # The administrator reads the audit trail of the first client's searches.
    admin, _ = token(cfg, discovery, cfg["admin"], "system/AuditEvent.rs")
    fhir = SyncFHIRClient(base, authorization=f"Bearer {admin}", requests_config={"verify": ca})
    first = cfg["clients"][0]["client_id"]
    events = fhir.resources("AuditEvent").search(agent=first).limit(5).fetch_all()
    assert events, "no AuditEvent for the client's searches"
    patient_seen = False
    kinds = set()
    for e in events:
        AuditEvent.model_validate(e.serialize())
        assert e["agent"][0]["who"]["identifier"]["value"] == first, e["agent"]
        kinds.add(e["type"]["code"])
        for ent in e.get("entity", []):
            if ent.get("what", {}).get("identifier", {}).get("value") == cfg["patient"]:
                patient_seen = True
    assert patient_seen, "no AuditEvent names the patient whose Observations were read"
    assert {"rest", "110114"} <= kinds, f"expected searches and token requests, got {kinds}"
    print(
        f"OK: {len(cfg['clients'])} clients got tokens ({', '.join(c['alg'] for c in cfg['clients'])}), "
        f"{searched} Observations over next links, replay refused, {len(events)} AuditEvents validated"
    )


if __name__ == "__main__":
    main()
