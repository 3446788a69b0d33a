#!/usr/bin/env python3
"""An EHR receiving Wardwatch's topic-based subscription notifications, with libraries nobody here wrote.

* PyJWT + requests get a SMART Backend Services token (the same steps as smart_backend_client.py, reused);
* fhirpy (SyncFHIRClient) reads the topics, creates the Subscription (R4 Subscriptions Backport shape), calls
  $status and $events and deletes the Subscription;
* the standard library's http.server (with ssl: HTTPS, a certificate of the hospital CA) is the rest-hook
  endpoint: it answers 200 (the acknowledgement) to each notification;
* fhir.resources (R4B models) validates every Bundle, Parameters, Subscription and SubscriptionTopic received.

Driven by tests/tests/subscriptions.rs over stdin/stdout, one line per step:

    python -> rust  "READY <subscription id>"   handshake received, subscription active
    rust -> python  "SENT 1"                    one high alarm was synced
    python -> rust  "GOT 1 DOWN"                event 1 received and acknowledged; the endpoint is now down
    rust -> python  "SENT 3"                    two more alarms were synced while it was down
    python          catches up with $events?eventsSinceNumber=2, checks it is exactly events 2 and 3,
                    brings the endpoint back, waits for the retried notifications, deletes the subscription
    python -> rust  "OK ..."

The JSON file named by the first argument: {"fhir_base", "ca_cert", "client": {"client_id", "private_key", "alg",
"kid"}, "patient", "endpoint_cert", "endpoint_key"}. Exits non-zero (with the failed check) otherwise.
Requires: pip install -r tests/python/requirements.txt
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.subscription import Subscription
from fhir.resources.R4B.subscriptiontopic import SubscriptionTopic
from fhirpy import SyncFHIRClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smart_backend_client import token  # noqa: E402  (reuse the SMART token steps)

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
SECRET = "Bearer ehr-hook-secret"


class Inbox:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bundles: list[dict] = []

    def add(self, b: dict) -> None:
        with self.lock:
            self.bundles.append(b)

    def all(self) -> list[dict]:
        with self.lock:
            return list(self.bundles)


def status_of(bundle: dict) -> dict:
    params = bundle["entry"][0]["resource"]
    Parameters.model_validate(params)
    out: dict = {"events": []}
    for p in params["parameter"]:
        if p["name"] == "notification-event":
            ev = {x["name"]: x for x in p["part"]}
            out["events"].append(int(ev["event-number"]["valueString"]))
        else:
            out[p["name"]] = next((v for k, v in p.items() if k.startswith("value")), None)
    return out


def serve(inbox: Inbox, tls: tuple[str, str], port: int = 0) -> ThreadingHTTPServer:
    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                assert self.headers.get("Authorization") == SECRET, self.headers
                assert self.headers.get("Content-Type", "").startswith("application/fhir+json")
                b = json.loads(body)
                Bundle.model_validate(b)
                assert b["type"] == "history", b["type"]
                inbox.add(b)
                self.send_response(200)
            except Exception as e:  # a bad notification fails the test, visibly
                print(f"bad notification: {e!r}", file=sys.stderr, flush=True)
                self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Hook)
    # HTTPS with a certificate of the hospital CA, which the cloud trusts for endpoints.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*tls)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def wait_for(what: str, pred, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def say(line: str) -> None:
    print(line, flush=True)


def expect(prefix: str) -> str:
    line = sys.stdin.readline().strip()
    assert line.startswith(prefix), f"expected {prefix!r} from the driver, got {line!r}"
    return line


def main() -> None:
    cfg = json.load(open(sys.argv[1]))
    base, ca = cfg["fhir_base"], cfg["ca_cert"]
    discovery = requests.get(f"{base}/.well-known/smart-configuration", verify=ca, timeout=30).json()
    access, _ = token(cfg, discovery, cfg["client"], "system/Subscription.crd system/DetectedIssue.r")
    fhir = SyncFHIRClient(base, authorization=f"Bearer {access}", requests_config={"verify": ca})

    topics = fhir.resources("SubscriptionTopic").fetch_all()
    for t in topics:
        SubscriptionTopic.model_validate(t.serialize())
    alarm_topic = next(t["url"] for t in topics if t["url"].endswith("/high-priority-alarm"))

    inbox = Inbox()
    tls = (cfg["endpoint_cert"], cfg["endpoint_key"])
    httpd = serve(inbox, tls)
    port = httpd.server_address[1]
    sub = fhir.resource(
        "Subscription",
        status="requested",
        reason="EHR: high-priority alarms of one patient",
        criteria=alarm_topic,
        _criteria={"extension": [{"url": BACKPORT + "backport-filter-criteria",
                                  "valueString": f"DetectedIssue?patient={cfg['patient']}"}]},
        channel={
            "extension": [{"url": BACKPORT + "backport-timeout", "valueUnsignedInt": 5},
                          {"url": BACKPORT + "backport-max-count", "valuePositiveInt": 20}],
            "type": "rest-hook",
            "endpoint": f"https://localhost:{port}/notify",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": "full-resource"}]},
            "header": [f"Authorization: {SECRET}"],
        },
    )
    sub.save()
    sid = sub["id"]
    assert sid, "the server assigned no id"
    Subscription.model_validate(sub.serialize())

    wait_for("handshake", lambda: any(status_of(b).get("type") == "handshake" for b in inbox.all()))
    wait_for("active", lambda: fhir.reference("Subscription", sid).to_resource()["status"] == "active")
    say(f"READY {sid}")

    expect("SENT 1")
    wait_for("event 1", lambda: any(1 in status_of(b)["events"] for b in inbox.all()))
    note = next(b for b in inbox.all() if 1 in status_of(b)["events"])
    st = status_of(note)
    assert st["type"] == "event-notification" and st["events-since-subscription-start"] == "1", st
    assert len(note["entry"]) == 2, note
    focus = note["entry"][1]
    assert "/DetectedIssue/" in focus["fullUrl"], focus
    assert focus["resource"]["resourceType"] == "DetectedIssue", "full-resource: the alarm itself"
    get_fhir_model_class("DetectedIssue").model_validate(focus["resource"])
    httpd.shutdown()
    httpd.server_close()
    say("GOT 1 DOWN")

    expect("SENT 3")
    status = fhir.reference("Subscription", sid).execute("$status", method="get")
    Bundle.model_validate(status)
    missed_from = 2
    st = status_of(status)
    assert st["events-since-subscription-start"] == "3", st
    caught = fhir.reference("Subscription", sid).execute(
        "$events", method="get", params={"eventsSinceNumber": str(missed_from), "eventsUntilNumber": st["events-since-subscription-start"]})
    Bundle.model_validate(caught)
    got = status_of(caught)
    assert got["type"] == "query-event" and got["events"] == [2, 3], got
    assert [e["fullUrl"].split("/")[-2] for e in caught["entry"][1:]] == ["DetectedIssue", "DetectedIssue"], caught
    for e in caught["entry"][1:]:
        get_fhir_model_class(e["resource"]["resourceType"]).model_validate(e["resource"])

    # Back up on the same port: the cloud's retries deliver what we already caught up with (same numbers).
    inbox2 = Inbox()
    httpd = serve(inbox2, tls, port)
    wait_for("retried events 2 and 3", lambda: {2, 3} <= {n for b in inbox2.all() for n in status_of(b)["events"]})
    wait_for("active again", lambda: fhir.reference("Subscription", sid).to_resource()["status"] == "active")
    fhir.reference("Subscription", sid).to_resource().delete()
    httpd.shutdown()
    say(f"OK subscription {sid}: handshake, event 1 pushed, events 2-3 caught up with $events and redelivered")


if __name__ == "__main__":
    main()
