"""kafka.security (librdkafka names) carried over to Faust's aiokafka clients."""

from __future__ import annotations

import ssl

import pytest
from faust.auth import GSSAPICredentials, SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams.config import ConfigError
from streams.kafka.clients import faust_credentials

SSL_KEY = "kafka.security.ssl"


def test_plaintext_needs_nothing() -> None:
    assert faust_credentials({}) is None
    assert faust_credentials({"security.protocol": "plaintext"}) is None


def test_sasl_scram_over_tls() -> None:
    credentials = faust_credentials(
        {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "caudal",
            "sasl.password": "secret",
        }
    )
    assert isinstance(credentials, SASLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("caudal", "secret")
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_sasl_plain_without_tls_and_librdkafka_plural_key() -> None:
    credentials = faust_credentials(
        {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "PLAIN",
            "sasl.username": "u",
            "sasl.password": "p",
        }
    )
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["ssl_context"] is None


def test_tls_only_and_verification_switches() -> None:
    credentials = faust_credentials(
        {"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "none"}
    )
    assert isinstance(credentials, SSLCredentials)
    assert credentials.context.check_hostname is False
    assert credentials.context.verify_mode == ssl.CERT_REQUIRED
    unverified = faust_credentials(
        {"security.protocol": "SSL", "enable.ssl.certificate.verification": "false"}
    )
    assert unverified.context.verify_mode == ssl.CERT_NONE


def test_kerberos() -> None:
    credentials = faust_credentials({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"})
    assert isinstance(credentials, GSSAPICredentials)
    assert credentials.kerberos_service_name == "kafka"


@pytest.mark.parametrize(
    ("security", "key"),
    [
        ({"security.protocol": "TLS"}, "kafka.security.security.protocol"),
        (
            {"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"},
            "kafka.security.sasl.mechanism",
        ),
        ({"security.protocol": "SASL_SSL", "sasl.username": "u"}, "kafka.security.sasl.password"),
        (
            {"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"},
            "kafka.security.ssl",
        ),
    ],
)
def test_what_cannot_be_applied_is_rejected_with_its_key(
    security: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as error:
        faust_credentials(security)
    assert [path for path, _ in error.value.errors] == [key]
