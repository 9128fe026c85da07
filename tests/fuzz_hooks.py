"""Schemathesis hooks for the contract fuzzer (tests/process/test_schemathesis.py): loaded by the
`st` command through SCHEMATHESIS_HOOKS=tests.fuzz_hooks.

Generated Idempotency-Keys repeat across requests with other bodies ("0", "a"), and reusing a
key for another request is the documented 422. Clients use a fresh key per request, so a
well-formed key is made unique here; a malformed one is left as generated, so its refusal
(400) is still tested.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis

_WELL_FORMED_KEY = re.compile(r"[!-~]{1,255}")


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    """Give each request with a well-formed Idempotency-Key a key of its own."""
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _WELL_FORMED_KEY.fullmatch(key):
        headers["Idempotency-Key"] = uuid.uuid4().hex
