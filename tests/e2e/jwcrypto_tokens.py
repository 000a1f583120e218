"""Makes JWE tokens with jwcrypto (upstream websockify's JWT library) for tests/e2e/jwe.rs.

Usage: python jwcrypto_tokens.py KEY_FILE < cases.json > tokens.json
       python jwcrypto_tokens.py --generate KIND KEY_FILE

--generate writes a new key made by jwcrypto: KIND "rsa" (2048 bits) or "ec" (P-256) as a PKCS#8
PEM private key, "octN" as the base64url text of an N-byte secret.

KEY_FILE is read as upstream's JWTTokenApi reads it: a PEM key, else the file's text as the
base64url "k" of an oct JWK. Each case is {"alg", "enc", "sign", "claims", "tamper"}: the
claims are signed (JWS, alg "sign") with the key, then encrypted (JWE, "alg"/"enc") with the
same key, as upstream expects. jwcrypto refuses an HMAC key shorter than the hash (so upstream
cannot use a 16-byte A128KW key to sign as well): with "short_hmac": true the inner HS256 token
is signed here with Python's hmac module instead, and only the JWE comes from jwcrypto. "tamper" names a part of the JWE whose first byte is flipped
afterwards: "encrypted_key", "iv", "ciphertext" or "tag" (or null). Prints one token per case,
as a JSON list.
"""

import base64
import hashlib
import hmac
import json
import sys

from jwcrypto import jwk, jwt


def load_key(path):
    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip().startswith(b"-----BEGIN"):
        return jwk.JWK.from_pem(data)
    return jwk.JWK(kty="oct", k=data.decode().strip())


def flip_first_byte(part):
    raw = bytearray(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    raw[0] ^= 0x01
    return b64(bytes(raw))


PARTS = {"encrypted_key": 1, "iv": 2, "ciphertext": 3, "tag": 4}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def short_hs256(key, claims):
    secret = base64.urlsafe_b64decode(key["k"] + "=" * (-len(key["k"]) % 4))
    signing_input = b64(b'{"alg":"HS256"}') + "." + b64(json.dumps(claims).encode())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def make(key, case):
    if case.get("short_hmac"):
        inner = short_hs256(key, case["claims"])
    else:
        signed = jwt.JWT(header={"alg": case["sign"]}, claims=case["claims"])
        signed.make_signed_token(key)
        inner = signed.serialize()
    outer = jwt.JWT(header={"alg": case["alg"], "enc": case["enc"]}, claims=inner)
    outer.make_encrypted_token(key)
    token = outer.serialize()
    tamper = case.get("tamper")
    if tamper:
        parts = token.split(".")
        parts[PARTS[tamper]] = flip_first_byte(parts[PARTS[tamper]])
        token = ".".join(parts)
    return token


def generate(kind, path):
    if kind == "rsa":
        key = jwk.JWK.generate(kty="RSA", size=2048)
    elif kind == "ec":
        key = jwk.JWK.generate(kty="EC", crv="P-256")
    else:
        key = jwk.JWK.generate(kty="oct", size=int(kind[len("oct"):]) * 8)
        with open(path, "w") as f:
            f.write(key["k"] + "\n")
        return
    with open(path, "wb") as f:
        f.write(key.export_to_pem(private_key=True, password=None))


def main():
    if sys.argv[1] == "--generate":
        generate(sys.argv[2], sys.argv[3])
        return
    key = load_key(sys.argv[1])
    cases = json.load(sys.stdin)
    json.dump([make(key, case) for case in cases], sys.stdout)


if __name__ == "__main__":
    main()
