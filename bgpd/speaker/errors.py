"""Typed BGP errors: every codec or FSM failure is a NotificationError with RFC 4271 codes."""

from __future__ import annotations

from dataclasses import dataclass

# Error codes (RFC 4271 §4.5, RFC 7313 for 7).
MESSAGE_HEADER_ERROR = 1
OPEN_MESSAGE_ERROR = 2
UPDATE_MESSAGE_ERROR = 3
HOLD_TIMER_EXPIRED = 4
FSM_ERROR = 5
CEASE = 6
ROUTE_REFRESH_MESSAGE_ERROR = 7

# Message Header Error subcodes.
CONNECTION_NOT_SYNCHRONIZED = 1
BAD_MESSAGE_LENGTH = 2
BAD_MESSAGE_TYPE = 3

# Subcode 0 of any code: RFC 4271 §6.2 uses it for a recognised but malformed optional parameter.
UNSPECIFIC = 0

# OPEN Message Error subcodes (RFC 4271, RFC 5492).
UNSUPPORTED_VERSION_NUMBER = 1
BAD_PEER_AS = 2
BAD_BGP_IDENTIFIER = 3
UNSUPPORTED_OPTIONAL_PARAMETER = 4
UNACCEPTABLE_HOLD_TIME = 6
UNSUPPORTED_CAPABILITY = 7
ROLE_MISMATCH = 11

# UPDATE Message Error subcodes.
MALFORMED_ATTRIBUTE_LIST = 1
UNRECOGNIZED_WELLKNOWN_ATTRIBUTE = 2
MISSING_WELLKNOWN_ATTRIBUTE = 3
ATTRIBUTE_FLAGS_ERROR = 4
ATTRIBUTE_LENGTH_ERROR = 5
INVALID_ORIGIN_ATTRIBUTE = 6
INVALID_NEXT_HOP_ATTRIBUTE = 8
OPTIONAL_ATTRIBUTE_ERROR = 9
INVALID_NETWORK_FIELD = 10
MALFORMED_AS_PATH = 11

# FSM Error subcodes (RFC 6608).
FSM_UNSPECIFIED = 0
FSM_UNEXPECTED_IN_OPENSENT = 1
FSM_UNEXPECTED_IN_OPENCONFIRM = 2
FSM_UNEXPECTED_IN_ESTABLISHED = 3

# Cease subcodes (RFC 4486, RFC 8538).
CEASE_MAX_PREFIXES = 1
CEASE_ADMIN_SHUTDOWN = 2
CEASE_PEER_DECONFIGURED = 3
CEASE_ADMIN_RESET = 4
CEASE_CONNECTION_REJECTED = 5
CEASE_OTHER_CONFIG_CHANGE = 6
CEASE_COLLISION_RESOLUTION = 7
CEASE_OUT_OF_RESOURCES = 8
CEASE_HARD_RESET = 9

# ROUTE-REFRESH Message Error subcodes (RFC 7313).
INVALID_MESSAGE_LENGTH = 1

ERROR_NAMES: dict[int, str] = {
    MESSAGE_HEADER_ERROR: "Message Header Error",
    OPEN_MESSAGE_ERROR: "OPEN Message Error",
    UPDATE_MESSAGE_ERROR: "UPDATE Message Error",
    HOLD_TIMER_EXPIRED: "Hold Timer Expired",
    FSM_ERROR: "Finite State Machine Error",
    CEASE: "Cease",
    ROUTE_REFRESH_MESSAGE_ERROR: "ROUTE-REFRESH Message Error",
}

SUBCODE_NAMES: dict[tuple[int, int], str] = {
    (MESSAGE_HEADER_ERROR, CONNECTION_NOT_SYNCHRONIZED): "Connection Not Synchronized",
    (MESSAGE_HEADER_ERROR, BAD_MESSAGE_LENGTH): "Bad Message Length",
    (MESSAGE_HEADER_ERROR, BAD_MESSAGE_TYPE): "Bad Message Type",
    (OPEN_MESSAGE_ERROR, UNSUPPORTED_VERSION_NUMBER): "Unsupported Version Number",
    (OPEN_MESSAGE_ERROR, BAD_PEER_AS): "Bad Peer AS",
    (OPEN_MESSAGE_ERROR, BAD_BGP_IDENTIFIER): "Bad BGP Identifier",
    (OPEN_MESSAGE_ERROR, UNSUPPORTED_OPTIONAL_PARAMETER): "Unsupported Optional Parameter",
    (OPEN_MESSAGE_ERROR, UNACCEPTABLE_HOLD_TIME): "Unacceptable Hold Time",
    (OPEN_MESSAGE_ERROR, UNSUPPORTED_CAPABILITY): "Unsupported Capability",
    (UPDATE_MESSAGE_ERROR, MALFORMED_ATTRIBUTE_LIST): "Malformed Attribute List",
    (UPDATE_MESSAGE_ERROR, UNRECOGNIZED_WELLKNOWN_ATTRIBUTE): "Unrecognized Well-known Attribute",
    (UPDATE_MESSAGE_ERROR, MISSING_WELLKNOWN_ATTRIBUTE): "Missing Well-known Attribute",
    (UPDATE_MESSAGE_ERROR, ATTRIBUTE_FLAGS_ERROR): "Attribute Flags Error",
    (UPDATE_MESSAGE_ERROR, ATTRIBUTE_LENGTH_ERROR): "Attribute Length Error",
    (UPDATE_MESSAGE_ERROR, INVALID_ORIGIN_ATTRIBUTE): "Invalid ORIGIN Attribute",
    (UPDATE_MESSAGE_ERROR, INVALID_NEXT_HOP_ATTRIBUTE): "Invalid NEXT_HOP Attribute",
    (UPDATE_MESSAGE_ERROR, OPTIONAL_ATTRIBUTE_ERROR): "Optional Attribute Error",
    (UPDATE_MESSAGE_ERROR, INVALID_NETWORK_FIELD): "Invalid Network Field",
    (UPDATE_MESSAGE_ERROR, MALFORMED_AS_PATH): "Malformed AS_PATH",
    (CEASE, CEASE_MAX_PREFIXES): "Maximum Number of Prefixes Reached",
    (CEASE, CEASE_ADMIN_SHUTDOWN): "Administrative Shutdown",
    (CEASE, CEASE_PEER_DECONFIGURED): "Peer De-configured",
    (CEASE, CEASE_ADMIN_RESET): "Administrative Reset",
    (CEASE, CEASE_CONNECTION_REJECTED): "Connection Rejected",
    (CEASE, CEASE_OTHER_CONFIG_CHANGE): "Other Configuration Change",
    (CEASE, CEASE_COLLISION_RESOLUTION): "Connection Collision Resolution",
    (CEASE, CEASE_OUT_OF_RESOURCES): "Out of Resources",
    (CEASE, CEASE_HARD_RESET): "Hard Reset",
}


def describe(code: int, subcode: int) -> str:
    """Human name of a NOTIFICATION code/subcode pair, as operators read it in logs."""
    major = ERROR_NAMES.get(code, f"code {code}")
    minor = SUBCODE_NAMES.get((code, subcode), f"subcode {subcode}")
    return f"{major} / {minor}"


_ERROR_FIELDS = frozenset({"code", "subcode", "data", "reason"})


# Not frozen=True/slots=True: Python must be able to set __traceback__/__context__ on a raised
# exception (contextlib and asyncio do), which a frozen slotted dataclass refuses with a
# TypeError that hides the real error. The fields are still write-once, and it stays hashable.
@dataclass(unsafe_hash=True)
class NotificationError(Exception):
    """A protocol error that must end the session with this NOTIFICATION.

    `reason` is for logs only; it never goes on the wire. It names the field or byte offset.
    """

    code: int
    subcode: int
    data: bytes = b""
    reason: str = ""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _ERROR_FIELDS and name in self.__dict__:
            raise AttributeError(f"NotificationError.{name} is read-only")
        super().__setattr__(name, value)

    def __str__(self) -> str:
        text = describe(self.code, self.subcode)
        return f"{text}: {self.reason}" if self.reason else text
