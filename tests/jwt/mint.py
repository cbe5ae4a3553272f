#!/usr/bin/env python3
"""Mint JWTs for every algorithm shardgate verifies, from a key directory it creates.

Usage:
    tests/jwt/mint.py KEY_DIR [--sub SUB] [--ttl SECONDS] [--now UNIX] [--claims JSON] [--regen]

On first use (or with --regen) KEY_DIR gets fresh keys:
    rsa.pem, ec256.pem, ec384.pem, ed25519.pem   private keys (PKCS#8 PEM)
    hs256.key, hs384.key, hs512.key              HMAC secrets (32/48/64+ bytes, one line)
    jwks.json                                    public JWK Set (kid = lowercase alg)
    auth.toml                                    an `[auth]` section using all of the above

Then it prints one JSON object on stdout:
    {"now": ..., "exp": ..., "dir": ..., "config": ".../auth.toml",
     "tokens": {"HS256": "...", ..., "EdDSA": "..."}}

Every token has header {"alg", "typ": "JWT", "kid"} and claims sub, iat, exp, jti plus
whatever --claims adds (it may also override them, e.g. '{"exp": 1}').
Installs pyjwt and cryptography with pip if they are missing.
"""

import argparse
import importlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid


def ensure_deps():
    try:
        importlib.import_module("jwt")
        importlib.import_module("cryptography")
    except ImportError:
        subprocess.check_call(
            [sys.executable, "-m", "pip", "install", "--quiet", "pyjwt>=2.8", "cryptography>=41"]
        )
        importlib.invalidate_caches()


ensure_deps()

import jwt  # noqa: E402
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402

# alg -> (private key file, public-key family)
ASYMMETRIC = {
    "RS256": ("rsa.pem", RSAAlgorithm),
    "RS384": ("rsa.pem", RSAAlgorithm),
    "RS512": ("rsa.pem", RSAAlgorithm),
    "PS256": ("rsa.pem", RSAAlgorithm),
    "PS384": ("rsa.pem", RSAAlgorithm),
    "PS512": ("rsa.pem", RSAAlgorithm),
    "ES256": ("ec256.pem", ECAlgorithm),
    "ES384": ("ec384.pem", ECAlgorithm),
    "EdDSA": ("ed25519.pem", OKPAlgorithm),
}
HMAC = {"HS256": ("hs256.key", 32), "HS384": ("hs384.key", 48), "HS512": ("hs512.key", 64)}


def write_private(path, key):
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with open(path, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)


def generate(key_dir):
    os.makedirs(key_dir, exist_ok=True)
    write_private(os.path.join(key_dir, "rsa.pem"), rsa.generate_private_key(65537, 2048))
    write_private(os.path.join(key_dir, "ec256.pem"), ec.generate_private_key(ec.SECP256R1()))
    write_private(os.path.join(key_dir, "ec384.pem"), ec.generate_private_key(ec.SECP384R1()))
    write_private(os.path.join(key_dir, "ed25519.pem"), ed25519.Ed25519PrivateKey.generate())
    for name, size in HMAC.values():
        path = os.path.join(key_dir, name)
        with open(path, "w") as f:
            # token_urlsafe(n) yields ~1.33n characters: at least n bytes of secret.
            f.write(secrets.token_urlsafe(size) + "\n")
        os.chmod(path, 0o600)

    keys = []
    for alg, (name, family) in ASYMMETRIC.items():
        jwk = json.loads(family.to_jwk(load_private(key_dir, name).public_key()))
        jwk.update({"kid": alg.lower(), "alg": alg, "use": "sig"})
        keys.append(jwk)
    with open(os.path.join(key_dir, "jwks.json"), "w") as f:
        json.dump({"keys": keys}, f, indent=2)

    lines = ["[auth]", 'header = "authorization"', "leeway_secs = 60", ""]
    for alg, (name, _) in HMAC.items():
        lines += ["[[auth.keys]]", f'kid = "{alg.lower()}"', f'alg = "{alg}"',
                  f'secret = {{ file = "{name}" }}', ""]
    for alg in ASYMMETRIC:
        lines += ["[[auth.keys]]", f'kid = "{alg.lower()}"', f'alg = "{alg}"',
                  'jwks_file = "jwks.json"', ""]
    with open(os.path.join(key_dir, "auth.toml"), "w") as f:
        f.write("\n".join(lines))


def load_private(key_dir, name):
    with open(os.path.join(key_dir, name), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def read_secret(key_dir, name):
    with open(os.path.join(key_dir, name), "rb") as f:
        return f.read().rstrip(b"\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("key_dir")
    p.add_argument("--sub", default="user-1")
    p.add_argument("--ttl", type=int, default=3600)
    p.add_argument("--now", type=int, default=None, help="unix seconds (default: current time)")
    p.add_argument("--claims", default="{}", help="JSON object merged into the claims")
    p.add_argument("--regen", action="store_true", help="generate fresh keys even if present")
    args = p.parse_args()

    if args.regen or not os.path.exists(os.path.join(args.key_dir, "jwks.json")):
        generate(args.key_dir)

    now = args.now if args.now is not None else int(time.time())
    extra = json.loads(args.claims)
    if not isinstance(extra, dict):
        p.error("--claims must be a JSON object")
    tokens = {}
    for alg in list(HMAC) + list(ASYMMETRIC):
        claims = {"sub": args.sub, "iat": now, "exp": now + args.ttl, "jti": str(uuid.uuid4())}
        claims.update(extra)
        if alg in HMAC:
            key = read_secret(args.key_dir, HMAC[alg][0])
        else:
            key = load_private(args.key_dir, ASYMMETRIC[alg][0])
        tokens[alg] = jwt.encode(claims, key, algorithm=alg, headers={"kid": alg.lower(), "typ": "JWT"})

    json.dump(
        {
            "now": now,
            "exp": now + args.ttl,
            "dir": os.path.abspath(args.key_dir),
            "config": os.path.abspath(os.path.join(args.key_dir, "auth.toml")),
            "tokens": tokens,
        },
        sys.stdout,
        indent=2,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
