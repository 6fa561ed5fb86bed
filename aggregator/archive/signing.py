"""The signature scheme of CloudTrail digest files, which the central archive's own digest chain
uses too (so the same tools reason about both): SHA256withRSA (RSASSA-PKCS1-v1_5 with SHA-256)
over a four-line signing string, the hex signature in the object metadata ``signature``.

The signed string is ``digestEndTime``, ``digestS3Bucket/digestS3Object``, hex SHA-256 of the
digest's uncompressed content and ``previousDigestSignature`` (the text ``null`` for the first
digest of a chain), joined by ``\\n``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SIGNATURE_ALGORITHM = "SHA256withRSA"


class DigestFormatError(ValueError):
    """A digest object that is not a CloudTrail digest (bad gzip/JSON/fields/metadata)."""


Signer = Callable[[bytes], Awaitable[bytes]]


def signing_string(doc: Mapping[str, Any], body_sha256: str) -> bytes:
    """The data CloudTrail signs for one digest."""
    previous = doc.get("previousDigestSignature")
    return "\n".join(
        (
            str(doc["digestEndTime"]),
            f"{doc['digestS3Bucket']}/{doc['digestS3Object']}",
            body_sha256,
            "null" if previous is None else str(previous),
        )
    ).encode()


def load_public_key(data: bytes) -> rsa.RSAPublicKey:
    """An RSA public key from PEM or DER (PKCS#1 RSAPublicKey or SubjectPublicKeyInfo)."""
    key: Any
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
    else:
        key = serialization.load_der_public_key(data)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def public_key_fingerprint(key: rsa.RSAPublicKey) -> str:
    """Our fingerprint for a local key: hex MD5 of its DER PKCS#1 form (32 hex digits, the shape
    CloudTrail uses). A key file named ``<32 hex>.pem|.der`` uses its name instead, so keys saved
    from ListPublicKeys keep CloudTrail's own fingerprint."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.md5(der, usedforsecurity=False).hexdigest()


def verify_signature(key: rsa.RSAPublicKey, data: bytes, signature_hex: str) -> bool:
    try:
        sig = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    try:
        key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def rsa_signer(private_key: rsa.RSAPrivateKey) -> Signer:
    async def sign(data: bytes) -> bytes:
        return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    return sign
