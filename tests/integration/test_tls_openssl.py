"""Interop: the tlslite-ng key adapter (``iotid.host.tls``) against ``openssl s_server``.

The server demands a client certificate from our CA (``-Verify 1 -verify_return_error``) and
runs in ``-rev`` mode (each line comes back reversed). Client keys P-256, P-384 and RSA-2048,
TLS 1.3 and 1.2, each signed by a software signer and by the mTLS applet on an emulated card
(key provisioned into the identity slot, signatures over APDUs). Negative cases: a client
certificate from another CA, a server certificate from another CA or for another name.
Every s_server is bounded (``-naccept 1``, a kill after a timeout).
"""

from __future__ import annotations

import shutil
from contextlib import AbstractContextManager

import pytest

from iotid.host.tls import TlsError, TlsVerificationError, connect
from support.tls import (
    EXPECTED,
    KEYS,
    VERSIONS,
    Recording,
    SoftwareSigner,
    SServer,
    TlsPki,
    line_echo,
)
from support.tls import s_server as openssl_s_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsPki:
    return TlsPki.create(tmp_path_factory.mktemp("tls-openssl"))


def s_server(
    pki: TlsPki, version: str, *extra: str, cert: str = "server"
) -> AbstractContextManager[SServer]:
    d = pki.dir
    tls13 = version == "TLS1.3"
    return openssl_s_server(d / "ca.pem", d / f"{cert}.pem", d / f"{cert}.key", tls13, *extra)


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["software", "card"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("alg", list(KEYS))
def test_mutual_tls_with_openssl_s_server(pki: TlsPki, alg: str, version: str, kind: str) -> None:
    inner, chain = pki.signer_for(alg, kind)
    signer = Recording(inner)
    with s_server(pki, version) as server:
        client = connect(
            "127.0.0.1", server.port, signer, chain, [pki.ca.cert], versions=(version,)
        )
        assert client.version == version
        assert line_echo(client, b"hello from the device") == b"ecived eht morf olleh\n"
        client.close()
        out = server.output()
    assert signer.calls == [EXPECTED[alg]]  # exactly one CertificateVerify, made by the signer
    assert f"Peer certificate: CN = device-{alg}" in out
    assert "Verification: OK" in out
    assert f"Protocol version: {version.replace('TLS', 'TLSv')}" in out
    assert "Signature type: " + ("ECDSA" if alg != "rsa2048" else "RSA-PSS") in out


@pytest.mark.parametrize("kind", ["software", "card"])
def test_tls12_rsa_pkcs1_when_the_server_allows_only_pkcs1(pki: TlsPki, kind: str) -> None:
    inner, chain = pki.signer_for("rsa2048", kind)
    signer = Recording(inner)
    with s_server(pki, "TLS1.2", "-client_sigalgs", "RSA+SHA256") as server:
        client = connect(
            "127.0.0.1",
            server.port,
            signer,
            chain,
            [pki.ca.cert],
            versions=("TLS1.2",),
        )
        assert line_echo(client, b"pkcs1") == b"1sckp\n"
        client.close()
        out = server.output()
    assert signer.calls == [("sha256", "pkcs1")]  # DigestInfo stripped, bare digest to the SE
    assert "Signature type: RSA" in out
    assert "Verification: OK" in out


@pytest.mark.parametrize("version", VERSIONS)
def test_client_certificate_from_another_ca_is_refused(pki: TlsPki, version: str) -> None:
    key = pki.keys["p256"]
    foreign = pki.rogue.client("device-foreign", key.public_key())
    with s_server(pki, version) as server:
        # In TLS 1.3 the client's handshake ends before the server has judged the certificate:
        # the refusal then arrives as an alert on the first read.
        with pytest.raises((TlsError, OSError)):  # an alert, or the reset that follows it
            client = connect(
                "127.0.0.1",
                server.port,
                SoftwareSigner(key),
                [foreign],
                [pki.ca.cert],
                versions=(version,),
            )
            line_echo(client, b"must not come back")
        out = server.output()
    assert "Verification: OK" not in out
    assert "verify error" in out or "certificate verify failed" in out
    assert "kcab emoc ton tsum" not in out


@pytest.mark.parametrize("version", VERSIONS)
def test_server_certificate_from_another_ca_fails_closed(pki: TlsPki, version: str) -> None:
    signer = Recording(SoftwareSigner(pki.keys["p256"]))
    with s_server(pki, version, cert="rogue-server") as server:
        with pytest.raises(TlsVerificationError):
            connect(
                "127.0.0.1",
                server.port,
                signer,
                [pki.client_certs["p256"]],
                [pki.ca.cert],
                versions=(version,),
            )
        out = server.output()
    assert "ACCEPT" in out  # s_server ran and has exited: our side closed the connection


@pytest.mark.parametrize("version", VERSIONS)
def test_server_certificate_for_another_name_fails_closed(pki: TlsPki, version: str) -> None:
    with s_server(pki, version) as server:
        with pytest.raises(TlsVerificationError, match="rejected"):
            connect(
                "127.0.0.1",
                server.port,
                SoftwareSigner(pki.keys["p384"]),
                [pki.client_certs["p384"]],
                [pki.ca.cert],
                server_name="fleet.example.com",
                versions=(version,),
            )
        server.output()
