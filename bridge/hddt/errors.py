"""The one exception root of :mod:`bridge.hddt`.

Errors of the HDDT layer carry what the resource server needs to answer with the
OperationOutcome the HDDT "Error Codes" page (error-codes.md) demands.
"""

from __future__ import annotations

from bridge.errors import BridgeError


class HddtError(BridgeError):
    """Root of every error the HDDT export interface raises on purpose."""
