#!/usr/bin/env python3
"""Interoperability check of the Wardwatch edge's HL7 v2 / IHE PCD-01 MLLP listener against third-party code.

The ORU^R01 messages are built with hl7apy (a third-party HL7 v2 library, not our parser), sent over MLLP to
HOST:PORT, and the ACKs are parsed with the `hl7` package when it is installed (else with hl7apy) and checked:
AA for good messages, AE with ERR segments (code and location) for bad observations, AA again for a resend
(deduplicated by the edge), AR with ERR code 200 for an unsupported message type.

Usage: hl7_interop.py HOST PORT [WARD]   (WARD defaults to 7A; it must be served by the edge)
Exit status 0 when every check passed. Prints one line per check and "N passed, N failed" at the end.
"""

import socket
import sys
import time

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

try:  # optional second library for reading the ACKs
    import hl7 as hl7_pkg
except ImportError:  # pragma: no cover - depends on the environment
    hl7_pkg = None

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
RUN = time.strftime("%H%M%S")


def oru(control_id, ward, observations):
    """An IHE PCD-01 ORU^R01 built with hl7apy. observations: (code, ref, containment, type, value, unit)."""
    m = Message("ORU_R01", version="2.6", validation_level=VALIDATION_LEVEL.TOLERANT)
    m.msh.msh_3 = "InteropMon^0123456789ABCDEF^EUI-64"
    m.msh.msh_7 = "20240301101500+0000"
    m.msh.msh_9 = "ORU^R01^ORU_R01"
    m.msh.msh_10 = control_id
    m.msh.msh_11 = "P"
    m.msh.msh_12 = "2.6"
    m.msh.msh_15 = "NE"
    m.msh.msh_16 = "AL"
    m.msh.msh_21 = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
    result = m.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    patient.pid.pid_3 = "MRN42^^^Hospital^MR"
    patient.pid.pid_5 = "Interop^Test"
    visit = patient.add_group("ORU_R01_VISIT")
    visit.pv1.pv1_2 = "I"
    visit.pv1.pv1_3 = f"{ward}^^4"
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_4 = "182777000^monitoring of patient^SCT"
    order.obr.obr_7 = "20240301101400+0000"
    mds = order.add_group("ORU_R01_OBSERVATION")
    mds.obx.obx_1 = "1"
    mds.obx.obx_3 = "69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC"
    mds.obx.obx_4 = "1.0.0.0"
    mds.obx.obx_11 = "X"
    mds.obx.obx_18 = "0123456789ABCDEF^EUI-64"
    for i, (code, ref, containment, vtype, value, unit) in enumerate(observations, start=2):
        o = order.add_group("ORU_R01_OBSERVATION")
        o.obx.obx_1 = str(i)
        o.obx.obx_2 = vtype
        o.obx.obx_3 = f"{code}^{ref}^MDC"
        o.obx.obx_4 = containment
        o.obx.obx_5 = value
        o.obx.obx_6 = unit
        o.obx.obx_11 = "F"
    return m.to_er7()


def adt(control_id):
    m = Message("ADT_A01", version="2.6", validation_level=VALIDATION_LEVEL.TOLERANT)
    m.msh.msh_3 = "InteropADT"
    m.msh.msh_9 = "ADT^A01^ADT_A01"
    m.msh.msh_10 = control_id
    m.msh.msh_11 = "P"
    m.msh.msh_12 = "2.6"
    m.pid.pid_3 = "MRN42^^^Hospital^MR"
    return m.to_er7()


def exchange(host, port, message):
    with socket.create_connection((host, port), timeout=15) as s:
        s.sendall(SB + message.encode("utf-8") + EB + CR)
        data = b""
        while EB + CR not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed before an ACK arrived (got {data!r})")
            data += chunk
    start = data.index(SB) + 1
    return data[start:data.index(EB)].decode("utf-8")


def read_ack(text):
    """(MSA-1, MSA-2, [(ERR-2, ERR-3.1, ERR-4, ERR-8)], MSH-9) read by a third-party parser."""
    if hl7_pkg is not None:
        msg = hl7_pkg.parse(text)
        msa = msg.segment("MSA")
        try:
            err_segments = msg.segments("ERR")
        except KeyError:  # the hl7 package raises when there is none
            err_segments = []
        errs = [(str(e[2]), str(e[3][0][0]), str(e[4]), str(e[8])) for e in err_segments]
        return str(msa[1]), str(msa[2]), errs, str(msg.segment("MSH")[9])
    from hl7apy.parser import parse_message

    msg = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    errs = [
        (e.err_2.to_er7(), e.err_3.err_3_1.to_er7(), e.err_4.to_er7(), e.err_8.to_er7())
        for e in msg.children
        if e.name == "ERR"
    ]
    return msg.msa.msa_1.to_er7(), msg.msa.msa_2.to_er7(), errs, msg.msh.msh_9.to_er7()


GOOD = [
    ("147842", "MDC_ECG_HEART_RATE", "1.1.1.1", "NM", "72", "264864^MDC_DIM_BEAT_PER_MIN^MDC"),
    ("150456", "MDC_PULS_OXIM_SAT_O2", "1.2.1.1", "NM", "97", "262688^MDC_DIM_PERCENT^MDC"),
    ("150021", "MDC_PRESS_BLD_NONINV_SYS", "1.3.1.1", "NM", "121", "266016^MDC_DIM_MMHG^MDC"),
    ("150022", "MDC_PRESS_BLD_NONINV_DIA", "1.3.1.2", "NM", "79", "266016^MDC_DIM_MMHG^MDC"),
    ("150023", "MDC_PRESS_BLD_NONINV_MEAN", "1.3.1.3", "NM", "93", "266016^MDC_DIM_MMHG^MDC"),
    ("150364", "MDC_TEMP_BODY", "1.4.1.1", "NM", "98.6", "[degF]^[degF]^UCUM"),
]
BAD = [
    ("147842", "MDC_ECG_HEART_RATE", "1.1.1.1", "NM", "75", "264864^MDC_DIM_BEAT_PER_MIN^MDC"),
    ("999999", "MDC_NOT_A_METRIC", "1.1.1.2", "NM", "5", "262688^MDC_DIM_PERCENT^MDC"),
    ("150456", "MDC_PULS_OXIM_SAT_O2", "1.2.1.1", "NM", "NaN", "262688^MDC_DIM_PERCENT^MDC"),
]


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    host, port = sys.argv[1], int(sys.argv[2])
    ward = sys.argv[3] if len(sys.argv) > 3 else "7A"
    print(f"hl7_interop: ACKs read with {'the hl7 package' if hl7_pkg else 'hl7apy'}")
    passed = failed = 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok   {name}")
        else:
            failed += 1
            print(f"FAIL {name}: {detail}")

    good_id = f"PY-GOOD-{RUN}"
    msa1, msa2, errs, msh9 = read_ack(exchange(host, port, oru(good_id, ward, GOOD)))
    check("good ORU^R01 is acknowledged AA", (msa1, msa2, errs) == ("AA", good_id, []), (msa1, msa2, errs))
    check("ACK MSH-9 is ACK^R01^ACK", msh9 == "ACK^R01^ACK", msh9)

    msa1, msa2, errs, _ = read_ack(exchange(host, port, oru(good_id, ward, GOOD)))
    check("resent ORU^R01 (same MSH-10) is acknowledged AA", (msa1, msa2, errs) == ("AA", good_id, []), (msa1, errs))

    bad_id = f"PY-BAD-{RUN}"
    msa1, msa2, errs, _ = read_ack(exchange(host, port, oru(bad_id, ward, BAD)))
    check("partially bad ORU^R01 is acknowledged AE", (msa1, msa2) == ("AE", bad_id), (msa1, msa2))
    locations = sorted((e[0], e[1], e[2]) for e in errs)
    check(
        "one ERR per rejected OBX with location, table 0357 code and severity",
        locations == [("OBX^3^3", "103", "E"), ("OBX^4^5", "102", "E")],
        errs,
    )
    check(
        "ERR-8 says the good observation was stored",
        all("stored" in e[3] for e in errs) and any("NaN" in e[3] for e in errs),
        [e[3] for e in errs],
    )

    adt_id = f"PY-ADT-{RUN}"
    msa1, msa2, errs, msh9 = read_ack(exchange(host, port, adt(adt_id)))
    check("ADT^A01 is rejected AR with ERR 200", (msa1, msa2, [e[1] for e in errs]) == ("AR", adt_id, ["200"]), (msa1, errs))

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
