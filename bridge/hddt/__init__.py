"""The HDDT export interface: FHIR R4 resource server (gematik HDDT 1.0.1)."""
