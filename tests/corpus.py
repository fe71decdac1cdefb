"""The corpus of raw HTTP/1.1 requests (tests/data/http), as test cases.

Each case is a file of raw bytes plus what the origin suite expected: for a valid file
the parsed requests, for an invalid one the name of the error. ``POLICY`` records where
asgictl answers differently from the origin server on purpose, and why.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import CORPUS

_ESCAPE = re.compile(rb"\\(r|n|t|0|x[0-9A-Fa-f]{2}|\\)")
_NAMED = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}

#: Cases where asgictl is stricter than the origin suite expected (the README there
#: allows asserting the stricter, safer answer). Value: the reason.
STRICTER = {
    # obs-fold is deprecated (RFC 9112 5.2) and a classic smuggling vector: refused.
    "valid/compat_obs_fold.http": "obs-fold refused",
    "valid/compat_obs_fold_huge.http": "obs-fold refused",
    # Methods must be tokens in upper case as sent; no case folding of "-BLARGH".
    "valid/031compat.http": "unconventional method refused",
    "valid/031compat2.http": "unconventional method refused",
    # Whitespace between a field name and the colon must be rejected (RFC 9112 5.1).
    "valid/028.http": "whitespace before colon refused",
    # Content-Length together with Transfer-Encoding (here "identity") is refused.
    "valid/009.http": "Content-Length with Transfer-Encoding refused",
    # Underscore spellings of framing headers are refused (smuggling past a proxy).
    "valid/040.http": "Transfer_Encoding / Content_Length refused",
    "valid/040_compat.http": "Transfer_Encoding / Content_Length refused",
    # Only "chunked" is a transfer coding asgictl decodes: others get 501 (RFC 9112 6.1).
    "valid/rfc9112_smuggle_gzip_chunked_01.http": "gzip transfer coding not implemented (501)",
    "valid/rfc9112_smuggle_te_identity_chunked_01.http": "identity transfer coding not implemented (501)",
    # Raw non-ASCII bytes in the target must be percent-encoded (RFC 3986); both
    # parsers refuse them.
    "valid/027.http": "raw UTF-8 in the request target refused",
    # The file holds 8,599 body bytes for a Content-Length of 17,914: when the client
    # half-closes, the request is incomplete and gets 400.
    "valid/099.http": "body shorter than its Content-Length",
}

#: The origin suite's default limits, where asgictl's defaults are more generous.
ORIGIN_DEFAULTS = {"limit_request_line": 4094}


@dataclass
class Case:
    file: str
    kind: str
    data: bytes
    requests: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.file.replace(".http", "")

    @property
    def accepted(self) -> int:
        """How many of the file's requests asgictl answers before refusing one (all of a
        valid file's, unless the policy is stricter; an HTTP/1.1 request without Host is
        refused, RFC 9112 3.2)."""
        if self.kind == "invalid" or self.file in STRICTER:
            return 0
        for index, request in enumerate(self.requests):
            if request["version"] == [1, 1] and not any(n.upper() == "HOST" for n, _ in request["headers"]):
                return index
        return len(self.requests)

    @property
    def expect_valid(self) -> bool:
        return self.kind == "valid" and self.accepted == len(self.requests)

    def options(self) -> dict[str, Any]:
        """asgictl options matching the origin suite's settings: its limits (0 there means
        its default), and its PROXY protocol switch, whose header was optional: ``auto``."""
        options = dict(ORIGIN_DEFAULTS)
        for key, value in self.settings.items():
            if key in ("limit_request_line", "limit_request_field_size", "limit_request_fields") and value:
                options[key] = value
        if self.proxy_protocol:
            options["proxy_protocol"] = "auto"
        return options

    @property
    def proxy_protocol(self) -> bool:
        return bool(self.settings.get("proxy_protocol"))

    @property
    def custom_limits(self) -> bool:
        options = self.options()
        options.pop("proxy_protocol", None)
        return options != ORIGIN_DEFAULTS


def decode(text: bytes) -> bytes:
    """The README's format: drop the file's newlines, then expand the escapes."""
    joined = text.replace(b"\r\n", b"\n").replace(b"\n", b"")

    def expand(match: re.Match[bytes]) -> bytes:
        token = match.group(1)
        if token[:1] == b"x":
            return bytes([int(token[1:], 16)])
        return _NAMED[token]

    return _ESCAPE.sub(expand, joined)


def load_cases() -> list[Case]:
    if not (CORPUS / "expectations.json").is_file():
        # The corpus is part of the repository: without it the run must fail, not
        # silently collect half the tests.
        raise FileNotFoundError(f"the request corpus is missing: {CORPUS}")
    expectations = json.loads((CORPUS / "expectations.json").read_text())
    cases = []
    for entry in expectations:
        path: Path = CORPUS / entry["file"]
        cases.append(
            Case(
                file=entry["file"],
                kind=entry["kind"],
                data=decode(path.read_bytes()),
                requests=entry.get("requests", []),
                error=entry.get("error"),
                settings=entry.get("server_settings", {}),
            )
        )
    return cases


def expected_body(request: dict[str, Any]) -> bytes:
    return base64.b64decode(request["body_b64"])
