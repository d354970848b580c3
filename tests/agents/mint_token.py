#!/usr/bin/env python3
"""Mints signed intent tokens for tests/intent_tokens.rs with joserfc: keys, JWK Sets and
tokens made by an independent JOSE library, never by tollgate's own code.

Usage: mint_token.py PLAN.json   (prints {"tokens": {NAME: TOKEN}} as JSON on stdout)

PLAN is one JSON object, so a whole test's keys and tokens cost one interpreter start:
  "keys":   {NAME: {"kty": "EC" | "OKP" | "RSA", "crv": optional (P-256, P-384, Ed25519),
                    "kid": optional}}
            fresh key pairs; the private halves never leave this process.
  "jwks":   {PATH: [KEY NAME, ...]}
            public JWK Sets written to PATH, as an issuer would publish them.
  "tokens": {NAME: {"key": KEY NAME, "claims": {...}, "kid": true (default) | false,
                    "alg": optional (default: ES256 / EdDSA / RS256 by key type),
                    "mode": "sign" (default) | "none" | "hs256-public-pem" | "hs256-public-jwk"
                            | "tamper",
                    "tamper": {claims} (mode tamper: replaced after signing, signature kept)}}

Modes other than "sign" are the attacks a verifier must refuse: an unsigned token
(alg "none"), HS256 keyed with the issuer's *public* key (PEM or JWK JSON), and a signed token
whose claims were edited afterwards.
"""

import base64
import json
import sys
import warnings

from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

# joserfc warns (rightly) about HS256 with a public key and about the "EdDSA" name; both are
# deliberate here.
warnings.simplefilter("ignore")

DEFAULT_ALG = {"EC": "ES256", "OKP": "EdDSA", "RSA": "RS256"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_key(spec: dict):
    params = {"kid": spec["kid"]} if spec.get("kid") else None
    kty = spec["kty"]
    if kty == "EC":
        return ECKey.generate_key(spec.get("crv", "P-256"), parameters=params, private=True)
    if kty == "OKP":
        return OKPKey.generate_key(spec.get("crv", "Ed25519"), parameters=params, private=True)
    if kty == "RSA":
        return RSAKey.generate_key(spec.get("bits", 2048), parameters=params, private=True)
    raise SystemExit(f"unknown kty {kty!r}")


def mint(spec: dict, keys: dict) -> str:
    key = keys[spec["key"]]
    claims = spec["claims"]
    mode = spec.get("mode", "sign")
    alg = spec.get("alg", DEFAULT_ALG[key.key_type])
    header = {"alg": alg, "typ": "JWT"}
    if spec.get("kid", True) and key.kid:
        header["kid"] = key.kid
    if mode == "sign":
        return jwt.encode(header, claims, key, algorithms=[alg])
    if mode == "tamper":
        token = jwt.encode(header, claims, key, algorithms=[alg])
        head, _, sig = token.split(".")
        edited = dict(claims, **spec["tamper"])
        return f"{head}.{b64(json.dumps(edited).encode())}.{sig}"
    if mode == "none":
        header["alg"] = "none"
        return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
    if mode in ("hs256-public-pem", "hs256-public-jwk"):
        if mode == "hs256-public-pem":
            secret = key.as_pem(private=False)
        else:
            secret = json.dumps(key.as_dict(private=False)).encode()
        header["alg"] = "HS256"
        return jwt.encode(header, claims, OctKey.import_key(secret), algorithms=["HS256"])
    raise SystemExit(f"unknown mode {mode!r}")


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        plan = json.load(f)
    keys = {name: make_key(spec) for name, spec in plan.get("keys", {}).items()}
    for path, names in plan.get("jwks", {}).items():
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"keys": [keys[n].as_dict(private=False) for n in names]}, f)
    tokens = {name: mint(spec, keys) for name, spec in plan.get("tokens", {}).items()}
    json.dump({"tokens": tokens}, sys.stdout)


if __name__ == "__main__":
    main()
