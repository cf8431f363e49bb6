"""`standardwebhooks` and PyJWT against Ferry: signatures and tokens they make are accepted (and
refused with RFC 6750 answers when wrong); what Ferry's signing sink sends, the library verifies."""
import base64
import json
import os
import tempfile
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from standardwebhooks.webhooks import Webhook

from harness import Capture, Ferry, Report, post, uid, without_traceparent

report = Report("standardwebhooks and PyJWT")
capture = Capture()
run = uid()
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
SINK_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
HS_SECRET = base64.b64encode(os.urandom(32)).decode()

keys = {
    "rsa": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", jwt.algorithms.RSAAlgorithm),
    "ec": (ec.generate_private_key(ec.SECP256R1()), "ES256", jwt.algorithms.ECAlgorithm),
    "ed": (ed25519.Ed25519PrivateKey.generate(), "EdDSA", jwt.algorithms.OKPAlgorithm),
}
jwks = []
for kid, (key, alg, algorithm) in keys.items():
    jwk = json.loads(algorithm.to_jwk(key.public_key()))
    jwk.update(kid=f"{kid}-{run}", use="sig")
    jwks.append(jwk)
keydir = tempfile.mkdtemp(prefix="ferry-interop-keys-")
with open(os.path.join(keydir, "jwks.json"), "w") as f:
    json.dump({"keys": jwks}, f)

CONFIG = f"""
[sources.hooks]
type = "http"
listen = "127.0.0.1:{{port:hooks}}"
path = "/events"
auth = {{ hmac = {{ scheme = "standard-webhooks", secrets = ["{SECRET}"] }} }}

[sources.api]
type = "http"
listen = "127.0.0.1:{{port:api}}"
path = "/events"
auth = {{ jwt = {{ keys = "{keydir}/jwks.json", secrets = ["{HS_SECRET}"], issuer = "https://idp.example", audience = "ferry" }} }}

[sinks.partner]
type = "http"
url = "http://127.0.0.1:{capture.port}/partner"
mode = "structured"
sign = {{ scheme = "standard-webhooks", secret = "{SINK_SECRET}" }}

[routes.all]
from = ["hooks", "api"]
to = ["partner"]
"""


def event(i):
    return {"specversion": "1.0", "id": f"{i}-{run}", "source": f"/interop/{run}",
            "type": "com.example.interop", "datacontenttype": "application/json", "data": {"n": i}}


def delivered(expected, authtype, authid):
    """The next request to the sink carries `expected` with the authcontext extension of its
    principal, and the library verifies the sink's signature."""
    expected = dict(expected, authtype=authtype, authid=authid)
    path, headers, body = capture.next()
    Webhook(SINK_SECRET).verify(body, headers)  # raises when the signature is wrong
    got = without_traceparent(json.loads(body))
    report.check(f"{expected['id']}: delivered and verified", expected, got)
    return headers


def signed(msg_id, body, secret=SECRET, when=None):
    when = when or time.time()
    from datetime import datetime, timezone
    ts = datetime.fromtimestamp(int(when), tz=timezone.utc)
    return {"content-type": "application/cloudevents+json", "webhook-id": msg_id,
            "webhook-timestamp": str(int(when)), "webhook-signature": Webhook(secret).sign(msg_id, ts, body.decode())}


def token(kid, alg, key, **claims):
    now = int(time.time())
    payload = {"iss": "https://idp.example", "aud": "ferry", "sub": f"partner-{run}", "iat": now, "exp": now + 300}
    payload.update(claims)
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


with Ferry(CONFIG) as ferry:
    hooks = ferry.url("hooks", "/events")
    api = ferry.url("api", "/events")

    def webhooks():
        e = event("wh1")
        body = json.dumps(e).encode()
        status, _, answer = post(hooks, signed(f"msg_{run}", body), body)
        report.check("standard webhooks: signed event accepted", 202, status)
        headers = delivered(e, "api_key", "hooks")
        report.check("sink webhook-id is msg_ + 32 hex", (True, 36), (headers["webhook-id"].startswith("msg_"), len(headers["webhook-id"])))
        # The sender retries with the same id, a new timestamp and signature: 202, not delivered again.
        status, _, answer = post(hooks, signed(f"msg_{run}", body, when=time.time() + 1), body)
        report.check("standard webhooks: retry of an accepted message is acknowledged", 202, status)
        # The very same request again is a replay.
        again = signed(f"msg_{run}-2", body)
        post(hooks, again, body)
        status, _, answer = post(hooks, again, body)
        report.check("standard webhooks: the same signed request twice is refused", 401, status)
        # A wrong secret and an old timestamp are refused with problem+json naming hmac.
        wrong = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        status, h, answer = post(hooks, signed(f"msg_{run}-3", body, secret=wrong), body)
        report.check("standard webhooks: wrong secret refused", (401, "application/problem+json"), (status, h.get("content-type")))
        status, _, answer = post(hooks, signed(f"msg_{run}-4", body, when=time.time() - 3600), body)
        report.check("standard webhooks: old timestamp refused", 401, status)
        # Only the first event and the replayed-then-new one (msg_{run}-2, same body) went out.
        delivered(e, "api_key", "hooks")
        marker = event("wh-marker")
        mbody = json.dumps(marker).encode()
        report.check("marker accepted", 202, post(hooks, signed(f"msg_{run}-m", mbody), mbody)[0])
        delivered(marker, "api_key", "hooks")

    report.run("standard webhooks", webhooks)

    def tokens():
        for name, (key, alg, _) in keys.items():
            e = event(f"jwt-{name}")
            headers = {"content-type": "application/cloudevents+json",
                       "authorization": f"Bearer {token(f'{name}-{run}', alg, key)}"}
            status, _, answer = post(api, headers, json.dumps(e).encode())
            report.check(f"PyJWT {alg}: accepted", 202, status)
            delivered(e, "user", f"partner-{run}")
        e = event("jwt-hs")
        hs = jwt.encode({"iss": "https://idp.example", "aud": "ferry", "sub": "hs", "exp": int(time.time()) + 60},
                        HS_SECRET, algorithm="HS256")
        status, _, _ = post(api, {"content-type": "application/cloudevents+json", "authorization": f"Bearer {hs}"},
                            json.dumps(e).encode())
        report.check("PyJWT HS256: accepted", 202, status)
        delivered(e, "user", "hs")

        def refused(case, tok, reason_part):
            status, h, answer = post(api, {"content-type": "application/cloudevents+json", "authorization": f"Bearer {tok}"},
                                     json.dumps(event("refused")).encode())
            challenge = h.get("www-authenticate", "")
            report.check(f"PyJWT {case}: 401 invalid_token", (401, True), (status, challenge.startswith('Bearer error="invalid_token"')))
            detail = json.loads(answer).get("detail", "")
            report.check(f"PyJWT {case}: detail names it ({detail})", True, reason_part in detail)

        rsa_key = keys["rsa"][0]
        refused("expired", token(f"rsa-{run}", "RS256", rsa_key, exp=int(time.time()) - 3600), "expired")
        refused("unknown kid", token(f"nobody-{run}", "RS256", rsa_key), "kid")
        refused("wrong audience", token(f"rsa-{run}", "RS256", rsa_key, aud="someone-else"), "aud")
        refused("alg none", jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none"), "")
        status, h, _ = post(api, {"content-type": "application/cloudevents+json"}, json.dumps(event("anon")).encode())
        report.check("no token: 401 with a Bearer challenge", (401, "Bearer"), (status, h.get("www-authenticate", "").split(" ")[0]))

    report.run("PyJWT", tokens)

capture.close()
report.done()
