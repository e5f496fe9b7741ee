"""Schemathesis hooks for the OpenAPI fuzz test (tests/openapi_fuzz.rs).

The contract answers 422 when an Idempotency-Key comes back with another
body. That rule depends on what was sent before, not on the request, so a
fuzzer that reuses a generated key would read it as a valid request refused.
Each valid key gets a suffix of its own here; tests/identity.rs and the
contract tests check the rule itself.
"""

import re
import uuid

import schemathesis

KEY = re.compile(r"^[!-~]([ -~]*[!-~])?$")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = case.headers or {}
    for name in list(headers):
        key = headers[name]
        if name.lower() == "idempotency-key" and isinstance(key, str) and KEY.match(key) and len(key) <= 255:
            headers[name] = f"{key[:200]}-{uuid.uuid4().hex}"
