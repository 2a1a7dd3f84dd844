"""ari.py: RFC 9773 renewal info, asked the way certbot 5 asks it.

No ARI-capable ACME server can be installed here: Debian's Pebble (2.4) and
OpenBao's PKI ACME have no ``renewalInfo`` in their directories. So the ARI
path is tested against a recorded answer of Let's Encrypt's shape, served
locally by ``stubs.HttpStub``, for a real certificate Pebble issued (the
``golden`` lineages); the fallback (no ``renewalInfo``) against the real Pebble.
"""
from __future__ import annotations

import base64
import datetime
import email.utils
import json
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest
from acme import messages
from certbot import errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import Golden, record
from servers import Bao, Pebble, free_port, make_listener_cert
from stubs import Answer, HttpStub, Request

from certbot_kvault._internal.renew.ari import AriClients, AriError, cert_id

HAS_ARI = hasattr(messages, "RenewalInfo")
needs_ari = pytest.mark.skipif(not HAS_ARI, reason="this acme cannot read ARI answers")

NOW = float(int(time.time()))
START, END = "2027-03-01T09:11:27Z", "2027-03-03T09:11:27Z"
EXPLANATION = "https://community.letsencrypt.org/t/ari-window-moved/12345"
# A renewalInfo answer as Let's Encrypt gives it (body and Retry-After header).
RECORDED = {"suggestedWindow": {"start": START, "end": END}, "explanationURL": EXPLANATION}


def ts(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AriCA:
    """A directory with ``renewalInfo`` and the renewalInfo answer it gives, in this process."""

    def __init__(self) -> None:
        self.status = 200
        self.body = json.dumps(RECORDED).encode()
        self.headers: dict[str, Optional[str]] = {"Retry-After": "21600"}
        self.stub = HttpStub(self._answer)
        self.directory_url = f"{self.stub.url}/directory"

    def _answer(self, request: Request) -> Answer:
        json_type = {"Content-Type": "application/json"}
        if request.path == "/directory":
            directory = {"newNonce": f"{self.stub.url}/nonce",
                         "renewalInfo": f"{self.stub.url}/acme/renewal-info"}
            return Answer(200, json.dumps(directory).encode(), json_type)
        if request.path.startswith("/acme/renewal-info/"):
            headers = {k: v for k, v in self.headers.items() if v is not None}
            return Answer(self.status, self.body, {**json_type, **headers})
        return Answer(404)

    def asked(self) -> list[str]:
        return [p for p in self.stub.seen if p.startswith("GET /acme/renewal-info/")]


@pytest.fixture
def ca() -> Iterator[AriCA]:
    stub = AriCA()
    try:
        yield stub
    finally:
        stub.stub.stop()


@pytest.fixture(scope="module")
def pems(bao: Bao, golden: Golden) -> dict[str, str]:
    """The golden lineages' certificates (real, issued by Pebble) by lineage name."""
    out = {}
    for name in ("calm", "short"):
        data = record(bao, golden.prefix, f"certificates/{name}")
        assert data is not None
        out[name] = str(data["cert"])
    return out


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---- the certificate ID ------------------------------------------------------------------


def test_cert_id_is_rfc_9773s_example() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ari.example")])
    aki = x509.AuthorityKeyIdentifier(
        key_identifier=bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"),
        authority_cert_issuer=None, authority_cert_serial_number=None)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(0x87654321)
            .not_valid_before(datetime.datetime(2025, 1, 1))
            .not_valid_after(datetime.datetime(2026, 1, 1))
            .add_extension(aki, critical=False).sign(key, hashes.SHA256()))
    assert cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


# ---- the ARI path, against the recorded answer -------------------------------------------


@needs_ari
def test_answer_for_a_pebble_certificate(ca: AriCA, pems: dict[str, str]) -> None:
    clients = AriClients(clock=lambda: NOW, rand=lambda a, b: a + (b - a) / 4)
    assert clients.supported(ca.directory_url)
    answer = clients.ask(ca.directory_url, pems["calm"])

    cert = x509.load_pem_x509_certificate(pems["calm"].encode())
    [asked] = ca.asked()
    akid, serial = asked.rpartition("/")[2].split(".")
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert b64decode(akid) == aki.key_identifier
    assert int.from_bytes(b64decode(serial), "big", signed=True) == cert.serial_number
    assert answer is not None
    assert (answer.start, answer.end) == (ts(START), ts(END))
    assert answer.picked == ts(START) + (ts(END) - ts(START)) / 4
    assert answer.next_check == NOW + 21600
    assert answer.explanation == EXPLANATION
    assert ca.stub.requests[-1].headers["User-Agent"].startswith("CertbotACMEClient/")
    assert clients.notes == []


@needs_ari
def test_picked_is_random_and_inside_the_window(ca: AriCA, pems: dict[str, str]) -> None:
    clients = AriClients(clock=lambda: NOW)
    picks = set()
    for _ in range(8):
        answer = clients.ask(ca.directory_url, pems["calm"])
        assert answer is not None
        assert ts(START) <= answer.picked <= ts(END)
        picks.add(answer.picked)
    assert len(picks) > 1


@needs_ari
@pytest.mark.parametrize("header, wait", [
    ("21600", 21600),
    (email.utils.formatdate(NOW + 7200, usegmt=True), 7200),   # an HTTP-date
    ("30", 60),                                                 # at least a minute
    ("172800", 86400),                                          # at most a day
    (email.utils.formatdate(NOW - 3600, usegmt=True), 60),      # a date in the past
    (None, 21600),                                              # absent: 6 h
    ("soon", 21600),                                            # unreadable: 6 h
], ids=["seconds", "date", "under-a-minute", "over-a-day", "past-date", "absent",
        "unreadable"])  # not the dates: pytest-xdist's workers must collect the same ids
def test_next_check_honors_retry_after(ca: AriCA, pems: dict[str, str],
                                       header: Optional[str], wait: int) -> None:
    ca.headers["Retry-After"] = header
    answer = AriClients(clock=lambda: NOW).ask(ca.directory_url, pems["calm"])
    assert answer is not None
    assert answer.next_check == NOW + wait


@needs_ari
def test_directory_is_fetched_once_for_many_asks(ca: AriCA, pems: dict[str, str]) -> None:
    clients = AriClients(clock=lambda: NOW)
    for _ in range(3):
        for pem in pems.values():
            assert clients.ask(ca.directory_url, pem) is not None
    assert ca.stub.seen.count("GET /directory") == 1
    assert len(ca.asked()) == 6
    assert len(set(ca.asked())) == 2


@needs_ari
@pytest.mark.parametrize("status, body", [
    (200, b"<html>\n<body>maintenance</body>\n</html>"),
    (200, json.dumps({"suggestedWindow": {"start": END, "end": START}}).encode()),
    (200, json.dumps({"explanationURL": EXPLANATION}).encode()),
    (200, json.dumps({"suggestedWindow": {"start": "tomorrow", "end": END}}).encode()),
    (200, json.dumps({"suggestedWindow": {"start": START}}).encode()),
    (200, json.dumps([RECORDED]).encode()),
    (500, json.dumps({"type": "urn:ietf:params:acme:error:serverInternal",
                      "detail": "two\nlines"}).encode()),
    (404, b"not found\n"),
])
def test_malformed_answer_is_one_line_ari_error(ca: AriCA, pems: dict[str, str],
                                                status: int, body: bytes) -> None:
    ca.status, ca.body = status, body
    with pytest.raises(AriError) as caught:
        AriClients(clock=lambda: NOW).ask(ca.directory_url, pems["calm"])
    message = str(caught.value)
    assert isinstance(caught.value, errors.Error)
    assert message.startswith("ARI: ") and "\n" not in message
    assert "/acme/renewal-info/" in message
    assert caught.value.next_check == NOW + 6 * 3600


@needs_ari
def test_explanation_must_be_an_http_url(ca: AriCA, pems: dict[str, str]) -> None:
    ca.body = json.dumps({**RECORDED, "explanationURL": "javascript:alert(1)"}).encode()
    answer = AriClients(clock=lambda: NOW).ask(ca.directory_url, pems["calm"])
    assert answer is not None and answer.explanation is None


def test_an_expired_certificate_is_not_asked(ca: AriCA, pems: dict[str, str]) -> None:
    cert = x509.load_pem_x509_certificate(pems["short"].encode())
    later = cert.not_valid_after_utc.timestamp() + 1
    assert AriClients(clock=lambda: later).ask(ca.directory_url, pems["short"]) is None
    assert ca.stub.seen == []


# ---- fallback: the real Pebble, and directories that cannot be read ----------------------


@needs_ari
def test_pebble_has_no_renewal_info(pebble: Pebble, pems: dict[str, str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert "renewalInfo" not in pebble.directory()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pebble.ca_bundle)
    before = directory_gets(pebble)
    clients = AriClients()
    assert not clients.supported(pebble.directory_url)
    for _ in range(3):
        assert clients.ask(pebble.directory_url, pems["calm"]) is None
    assert clients.notes == []
    assert directory_gets(pebble) == before + 1


def directory_gets(pebble: Pebble) -> int:
    """Directory requests Pebble has answered so far (from its log)."""
    return pebble.log_path.read_text(errors="replace").count("GET /dir -> ")


@needs_ari
def test_unreachable_directory_is_one_note(pems: dict[str, str]) -> None:
    server = f"http://127.0.0.1:{free_port()}/dir?token=s3cr3t"
    clients = AriClients(timeout=5)
    assert not clients.supported(server)
    assert not clients.supported(server)
    assert clients.ask(server, pems["calm"]) is None
    [note] = clients.notes
    assert note.startswith("ARI: ") and "\n" not in note
    assert "127.0.0.1" in note and "Connection refused" in note and "s3cr3t" not in note


@needs_ari
@pytest.mark.parametrize("status, body, why", [
    (503, b"<html>\n down \n</html>", "HTTP 503"),
    (200, b"[]", "the answer is not an ACME directory acme can read"),
    (200, b'{"meta": null}', "the answer is not an ACME directory acme can read"),
])
def test_unreadable_directory_is_asked_once(pems: dict[str, str],
                                            status: int, body: bytes, why: str) -> None:
    with HttpStub(lambda r: Answer(status, body)) as stub:
        clients = AriClients()
        for _ in range(3):
            assert not clients.supported(f"{stub.url}/dir")
            assert clients.ask(f"{stub.url}/dir", pems["calm"]) is None
        assert stub.seen == ["GET /dir"]
    [note] = clients.notes
    assert note.startswith(f"ARI: could not read the ACME directory {stub.url}/dir: {why};")
    assert "\n" not in note


@needs_ari
def test_untrusted_tls_certificate_is_one_note(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _, cert, key = make_listener_cert(tmp_path)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with HttpStub(lambda r: Answer(200, b"{}"), tls=(cert, key)) as stub:
        clients = AriClients()
        assert not clients.supported(f"{stub.url}/dir")
    assert clients.notes == [f"ARI: could not read the ACME directory {stub.url}/dir: TLS error:"
                             " its certificate is not trusted (see REQUESTS_CA_BUNDLE);"
                             " the lifetime rule applies"]


@pytest.mark.skipif(HAS_ARI, reason="this acme reads ARI answers")
def test_old_acme_asks_nobody(ca: AriCA, pems: dict[str, str]) -> None:
    clients = AriClients()
    assert not clients.supported(ca.directory_url)
    assert clients.ask(ca.directory_url, pems["calm"]) is None
    assert ca.stub.seen == []
    [note] = clients.notes
    assert "cannot read renewal info" in note and ca.directory_url in note
