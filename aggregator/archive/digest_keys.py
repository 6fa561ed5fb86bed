"""The keys of the archive's digest chain: a local PEM key or a KMS asymmetric key
(``RSASSA_PKCS1_V1_5_SHA_256``) to sign with, the public half to verify with, both taken from
``integrity.archive_digest``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from aggregator.archive.signing import Signer, load_public_key, public_key_fingerprint, rsa_signer
from aggregator.archive.store import archive_session
from aggregator.aws.clients import ClientPool, SessionProvider
from aggregator.aws.credentials import CredentialBroker
from aggregator.config import Settings

KMS_ALGORITHM = "RSASSA_PKCS1_V1_5_SHA_256"


@dataclass
class SigningKey:
    sign: Signer
    public_key: rsa.RSAPublicKey

    @property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.public_key)


def load_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: cannot load RSA private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA private key")
    return key


def local_signing_key(path: str | Path) -> SigningKey:
    key = load_private_key(path)
    return SigningKey(rsa_signer(key), key.public_key())


async def kms_signing_key(kms: Any, key_id: str) -> SigningKey:
    """A KMS asymmetric RSA key (KeyUsage SIGN_VERIFY); the message is sent RAW (our signing
    string is ~400 bytes, far under KMS's 4096-byte limit)."""
    pub = await kms.get_public_key(KeyId=key_id)
    public_key = serialization.load_der_public_key(pub["PublicKey"])
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError(f"KMS key {key_id} is not RSA")

    async def sign(data: bytes) -> bytes:
        resp = await kms.sign(
            KeyId=key_id, Message=data, MessageType="RAW", SigningAlgorithm=KMS_ALGORITHM
        )
        sig: bytes = resp["Signature"]
        return sig

    return SigningKey(sign, public_key)


def load_public_key_file(path: str | Path) -> rsa.RSAPublicKey:
    try:
        return load_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot load RSA public key: {exc}") from None


async def client_and_key(
    settings: Settings,
    pool: ClientPool,
    *,
    for_signing: bool,
    sessions: SessionProvider | None = None,
) -> tuple[Any, Any]:
    """The central bucket's S3 client (with the archive's identity) and the archive digest key:
    a :class:`SigningKey` ``for_signing``, else the public key."""
    sessions = sessions or CredentialBroker(settings, pool.aws)
    session = await archive_session(settings, sessions)
    s3 = await pool.get(session, "s3")
    cfg = settings.integrity.archive_digest
    if for_signing:
        if cfg.kms_key_id:
            return s3, await kms_signing_key(await pool.get(session, "kms"), cfg.kms_key_id)
        if not cfg.signing_key_path:
            raise SystemExit("integrity.archive_digest: no signing_key_path or kms_key_id")
        return s3, local_signing_key(cfg.signing_key_path)
    if cfg.public_key_path:
        return s3, load_public_key_file(cfg.public_key_path)
    if cfg.signing_key_path:
        return s3, load_private_key(cfg.signing_key_path).public_key()
    if cfg.kms_key_id:
        key = await kms_signing_key(await pool.get(session, "kms"), cfg.kms_key_id)
        return s3, key.public_key
    raise SystemExit(
        "integrity.archive_digest: set public_key_path, signing_key_path or kms_key_id"
    )
