"""DKIM test helpers: keys generated at test time, a loopback TXT server, and cross-check runners.

Reusable by any test that needs signed mail (recipe: ``../shared/recipes/mail-stack.md`` §5):

* ``rsa_key()`` / ``ed25519_key()`` — fresh keys (cached per process: RSA generation costs ~0.1 s),
  in every format the three implementations want; never written into the repository.
* ``zone(*keys)`` / ``dnsfunc(zone)`` / ``dkimpy_verify()`` — dkimpy without DNS.
* ``TxtServer(zone)`` — a dnspython UDP+TCP TXT server on 127.0.0.1 (``with TxtServer(z) as s: s.port``).
* ``mail_dkim_verify()`` — Mail::DKIM (Perl) with ``Mail::DKIM::DNS::query`` overridden: no DNS.
* ``opendkim_verify()`` / ``opendkim_sign()`` — the OpenDKIM daemon in test mode (``-t``), inside
  ``unshare -n`` because it links libunbound, which would recurse from the root hints otherwise.

Missing tools skip locally and fail under ``CI=true`` (``tests.support.unavailable``).
"""

from __future__ import annotations

import base64
import functools
import os
import re
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import authres
import dkim
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailgateway.dispatch.dkim import DkimKey, DkimSigner
from tests.support import unavailable

__all__ = [
    "GeneratedKey",
    "TxtServer",
    "dkimpy_sign",
    "dkimpy_verify",
    "dnsfunc",
    "ed25519_key",
    "free_udp_port",
    "mail_dkim_verify",
    "opendkim_sign",
    "opendkim_verify",
    "require_tools",
    "rsa_key",
    "sample_message",
    "signer",
    "zone",
]


@dataclass(frozen=True)
class GeneratedKey:
    selector: str
    domain: str
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    pem: bytes  # RSA: PKCS#1 ("traditional", every tool reads it); ed25519: PKCS#8 (OpenDKIM's)
    pkcs8_pem: bytes
    dkimpy_key: bytes  # what dkim.sign() takes: RSA PEM, or base64 of the raw ed25519 seed
    txt: str  # the DNS record value

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def signing_key(self, fmt: str = "pem") -> DkimKey:
        """As mailgateway's DkimKey; ``fmt``: "pem", "pkcs8" or "dkimpy" (ed25519 seed)."""
        data = {"pem": self.pem, "pkcs8": self.pkcs8_pem, "dkimpy": self.dkimpy_key}[fmt]
        return DkimKey(self.selector, self.algorithm, data)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@functools.cache
def rsa_key(selector: str = "rsa", domain: str = "ars.test", bits: int = 2048) -> GeneratedKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    none = serialization.NoEncryption()
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, none
    )
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = f"v=DKIM1; k=rsa; p={_b64(spki)}"
    return GeneratedKey(selector, domain, "rsa-sha256", pkcs1, pkcs8, pkcs1, txt)


@functools.cache
def signer(key: GeneratedKey) -> DkimSigner:
    """mailgateway's DkimSigner for ``key``, built once per process: loading a PEM RSA key checks
    it (~50 ms), which dominated tests that sign many messages. Signing itself is done afresh on
    every call (``t=`` from the wall clock), exactly as before."""
    return DkimSigner(key.domain, [key.signing_key()])


@functools.cache
def ed25519_key(selector: str = "ed", domain: str = "ars.test") -> GeneratedKey:
    key = ed25519.Ed25519PrivateKey.generate()
    none = serialization.NoEncryption()
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none)
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, none)
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    txt = f"v=DKIM1; k=ed25519; p={_b64(raw_public)}"
    return GeneratedKey(selector, domain, "ed25519-sha256", pkcs8, pkcs8, _b64(seed).encode(), txt)


def zone(*keys: GeneratedKey) -> dict[str, str]:
    return {k.name: k.txt for k in keys}


def dnsfunc(records: Mapping[str, str]) -> Callable[..., bytes | None]:
    """dkimpy's ``dnsfunc``: called as ``f(b"sel._domainkey.dom.", timeout=5)``."""
    table = {name.rstrip(".").lower(): value for name, value in records.items()}

    def lookup(name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        value = table.get(text.rstrip(".").lower())
        return value.encode() if value is not None else None

    return lookup


def dkimpy_verify(message: bytes, records: Mapping[str, str], idx: int = 0) -> bool:
    return bool(dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc(records)))


def dkimpy_sign(
    message: bytes, key: GeneratedKey, headers: tuple[str, ...] = ("from", "to", "subject")
) -> bytes:
    """A signature made by dkimpy itself (the reference for inbound tests)."""
    signature: bytes = dkim.sign(
        message,
        key.selector.encode(),
        key.domain.encode(),
        key.dkimpy_key,
        signature_algorithm=key.algorithm.encode(),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[h.encode() for h in headers],
    )
    return signature


def sample_message(
    *,
    sender: str = "ssi-ara@ars.test",
    to: str = "dsi@chu.test",
    subject: str = "[SSI-ARA-2026-0042] Accusé de réception",
    body: str = "Bonjour,\r\n\r\nVotre déclaration a bien été reçue.\r\n",
    extra_headers: str = "",
) -> bytes:
    """A small CRLF message with the headers our signer covers (UTF-8 body, RFC 2047 subject)."""
    from email.header import Header

    encoded_subject = Header(subject, "utf-8").encode()
    text = (
        f"From: Cellule SSI <{sender}>\r\nTo: {to}\r\nSubject: {encoded_subject}\r\n"
        "Date: Fri, 27 Nov 2026 08:30:00 +0100\r\nMessage-ID: <ack.42@ars.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\nAuto-Submitted: auto-replied\r\n"
        f"{extra_headers}\r\n{body}"
    )
    return text.encode("utf-8")


# --- loopback TXT server --------------------------------------------------------------------------


class TxtServer:
    """dnspython-based authoritative TXT answers for ``records`` on 127.0.0.1 (UDP and TCP, same port).

    ``queries`` counts the questions received (cache tests); ``fail`` makes it answer SERVFAIL.
    """

    def __init__(self, records: Mapping[str, str], ttl: int = 300) -> None:
        self.records = {name.rstrip(".").lower(): value for name, value in records.items()}
        self.ttl = ttl
        self.queries = 0
        self.fail = False
        self.port = 0
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        self.queries += 1
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.fail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        value = self.records.get(name)
        if value is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            # RFC 1035 §3.3.14: character-strings of at most 255 bytes; a long key is split.
            data = value.encode()
            chunks = " ".join(f'"{data[i : i + 255].decode()}"' for i in range(0, len(data), 255))
            rrset = dns.rrset.from_text(question.name, self.ttl, dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
            response.answer.append(rrset)
        return response.to_wire()

    def __enter__(self) -> TxtServer:
        owner = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = owner.answer(data)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                size = self.rfile.read(2)
                if len(size) == 2:
                    reply = owner.answer(self.rfile.read(int.from_bytes(size, "big")))
                    if reply is not None:
                        self.wfile.write(len(reply).to_bytes(2, "big") + reply)

        for _attempt in range(20):
            udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Udp)
            port = udp.server_address[1]
            try:
                tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), Tcp)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise OSError("no free UDP+TCP port pair on 127.0.0.1")
        udp.daemon_threads = tcp.daemon_threads = True
        self.port = port
        self._servers = [udp, tcp]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)


# --- external implementations ---------------------------------------------------------------------


def require_tools(*names: str) -> None:
    """Skip (locally) or fail (CI) unless every tool is present; unshare also needs root."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        unavailable(f"missing tools: {', '.join(missing)}")
    if "unshare" in names:
        if os.geteuid() != 0:
            unavailable("unshare -n needs root")
        if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
            unavailable("unshare -n is not permitted here")
    if "perl" in names:
        probe = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-e", "1"], capture_output=True)
        if probe.returncode != 0:
            unavailable("Perl module Mail::DKIM is missing (libmail-dkim-perl)")


_MAIL_DKIM_VERIFY = r"""
use strict; use warnings;
use Mail::DKIM::Verifier; use Net::DNS;
my %zone;
open(my $zf, '<', $ARGV[0]) or die "zone: $!";
while (my $l = <$zf>) { chomp $l; next unless $l; my ($n, $v) = split(/ /, $l, 2); $zone{lc $n} = $v; }
close $zf;
no warnings 'redefine';
# No DNS at all: answer key queries from the zone file (strings of at most 255 bytes).
*Mail::DKIM::DNS::query = sub {
    my ($domain, $type) = @_;
    my $v = $zone{lc $domain};
    return () unless defined $v && $type eq 'TXT';
    return (Net::DNS::RR->new(name => $domain, type => 'TXT', txtdata => [unpack('(a255)*', $v)]));
};
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) { $line =~ s/\r?\n\z/\r\n/; $dkim->PRINT($line); }
$dkim->CLOSE;
foreach my $sig ($dkim->signatures) {
    print join(" ", $sig->result, $sig->domain, $sig->selector, $sig->algorithm), "\n";
}
"""


def _zone_file(records: Mapping[str, str], directory: Path) -> Path:
    path = directory / "keys.txt"
    path.write_text("".join(f"{name.rstrip('.')} {value}\n" for name, value in records.items()))
    return path


def mail_dkim_verify(message: bytes, records: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """Mail::DKIM's verdict per signature: (result, d, s, algorithm); result pass/fail/invalid/none."""
    require_tools("perl")
    with tempfile.TemporaryDirectory() as tmp:
        keys = _zone_file(records, Path(tmp))
        proc = subprocess.run(
            ["perl", "-e", _MAIL_DKIM_VERIFY, str(keys)], input=message, capture_output=True, timeout=60
        )
    if proc.returncode != 0:
        raise AssertionError(f"Mail::DKIM failed: {proc.stderr.decode(errors='replace')}")
    rows = [line.split(" ") for line in proc.stdout.decode().splitlines() if line]
    return [(r[0], r[1], r[2], r[3]) for r in rows if len(r) == 4]


def _opendkim(conf: str, message: bytes, directory: Path) -> str:
    conf_path = directory / "opendkim.conf"
    conf_path.write_text(conf)
    msg_path = directory / "message.eml"
    msg_path.write_bytes(message)
    # Network namespace with only a (down) loopback: OpenDKIM's libunbound cannot reach the world.
    proc = subprocess.run(
        ["unshare", "-n", "opendkim", "-x", str(conf_path), "-t", str(msg_path), "-vv"],
        capture_output=True,
        timeout=60,
    )
    output = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise AssertionError(f"opendkim exited {proc.returncode}: {output}")
    return output


def opendkim_verify(message: bytes, records: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """OpenDKIM's verdict per signature, from the Authentication-Results it adds: (result, d, s, a)."""
    require_tools("opendkim", "unshare")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        keys = _zone_file(records, directory)
        conf = f"Mode v\nTestPublicKeys {keys}\nSyslog no\nAlwaysAddARHeader yes\nAuthservID verifier.test\n"
        output = _opendkim(conf, message, directory)
    match = re.search(r"hname='Authentication-Results' hvalue='(.*?)'\n", output, re.S)
    if match is None:
        raise AssertionError(f"opendkim added no Authentication-Results: {output}")
    header = authres.AuthenticationResultsHeader.parse_value(match.group(1).replace("\n", " "))
    verdicts = []
    for result in header.results:
        if result.method != "dkim":
            continue
        props = {f"{p.type}.{p.name}": p.value for p in result.properties}
        verdicts.append(
            (result.result, props.get("header.d", ""), props.get("header.s", ""), props.get("header.a", ""))
        )
    return verdicts


def opendkim_sign(message: bytes, key: GeneratedKey) -> bytes:
    """The DKIM-Signature header (CRLF) OpenDKIM makes for ``message`` (relaxed/relaxed)."""
    require_tools("opendkim", "unshare")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        key_file = directory / "key.pem"
        key_file.write_bytes(key.pem)
        key_file.chmod(0o600)
        keys = _zone_file(zone(key), directory)
        conf = (
            f"Mode s\nDomain {key.domain}\nSelector {key.selector}\nKeyFile {key_file}\n"
            f"SignatureAlgorithm {key.algorithm}\nCanonicalization relaxed/relaxed\n"
            f"TestPublicKeys {keys}\nSyslog no\nRequireSafeKeys no\n"
        )
        output = _opendkim(conf, message, directory)
    match = re.search(r"hname='DKIM-Signature' hvalue='(.*?)'\n", output, re.S)
    if match is None:
        raise AssertionError(f"opendkim did not sign: {output}")
    return b"DKIM-Signature: " + match.group(1).replace("\n", "\r\n").encode() + b"\r\n"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
