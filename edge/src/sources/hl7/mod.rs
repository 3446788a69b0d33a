//! HL7 v2 / IHE PCD-01 over MLLP (being written).
