"""Connection and TLS failures in plain words, for the agent's log, `status` and `doctor` alike.

OpenSSL's words name its internals ("PEM lib", "WRONG_VERSION_NUMBER") and a plain-MQTT port answers a
TLS hello by hanging up, which Python reports as "Connection reset by peer": neither tells a technician
what to change. Imports only the standard library (doctor and check-config use it without paho).
"""

from __future__ import annotations

import ssl

NOT_TLS = "the broker's port does not speak TLS? (it hung up on the TLS handshake; the TLS port is usually 8883)"

# OpenSSL reasons that mean the other end answered, but not in TLS (or hung up mid-handshake).
_NOT_TLS_REASONS = frozenset((
    "WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
    "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "UNEXPECTED_MESSAGE",
))
# Alerts the broker sends about our client certificate.
_CLIENT_CERT_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the broker wants a client certificate: set mqtt.cert_file and mqtt.key_file",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the broker refused the TLS handshake (no client certificate, or no common cipher)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the broker did not accept our client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the broker does not trust the CA that signed our client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the broker says our client certificate has expired (or its clock is off)",
    "TLSV1_ALERT_DECRYPT_ERROR": "the broker did not accept our client certificate",
}


def describe(err: BaseException, *, tls: bool) -> str:
    """Why a connect (or TLS handshake) failed, as a technician would want to read it."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({err.verify_message})"
    if tls and handshake_hung_up(err):
        return NOT_TLS
    if isinstance(err, ssl.SSLError):
        reason = err.reason or ""
        if reason in _CLIENT_CERT_REASONS:
            return f"{_CLIENT_CERT_REASONS[reason]} ({reason})"
        return f"TLS error ({reason or err})"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def handshake_hung_up(err: BaseException) -> bool:
    """A TLS handshake the other end answered by hanging up or with something that is not TLS."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return False
    if isinstance(err, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return True
    if isinstance(err, ssl.SSLError):
        return (err.reason or "") in _NOT_TLS_REASONS
    return isinstance(err, ConnectionResetError | BrokenPipeError | ConnectionAbortedError)


def pem_problem(path: str, *, private_key: bool) -> str | None:
    """What is wrong with a PEM file OpenSSL would only call "PEM lib", or None when it looks right."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(1 << 20)
    except OSError as err:
        return f"cannot read {path}: {err.strerror}"
    if not text.strip():
        return f"{path} is empty"
    if private_key:
        if b"-----BEGIN" not in text or b"PRIVATE KEY-----" not in text:
            return f"{path} is not a PEM private key (no \"-----BEGIN ... PRIVATE KEY-----\" line)"
        if b"ENCRYPTED" in text:
            return f"{path} is protected by a passphrase the agent cannot type: store it decrypted (mode 0600)"
    elif b"-----BEGIN CERTIFICATE-----" not in text:
        return f"{path} is not a PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line)"
    return None
