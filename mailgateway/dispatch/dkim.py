"""Outbound DKIM signing (RFC 6376), RSA and ed25519 (RFC 8463), fast enough for bulletin fan-out.

Why not simply ``dkim.sign()``
------------------------------
dkimpy's ``DKIM.sign`` → ``DomainSigner.gen_header`` calls the *module-level* function
``dkim.crypto.RSASSA_PKCS1_v1_5_sign(hash, key)``, a pure-Python modular exponentiation: ≈5.7 ms
per message with a 2048-bit key, while OpenSSL through ``cryptography`` takes ≈0.2 ms (README, "Benchmarks":
the 10,000-message fan-out needs the fast path). There is no hook to replace that step:

* monkeypatching ``dkim.RSASSA_PKCS1_v1_5_sign`` would change it for the whole process, including
  dkimpy's own verification users, and can't be scoped to one key;
* a ``dkim.DKIM`` subclass would have to re-implement ``gen_header`` anyway (the RSA branch is
  inline), and ``DKIM.sign`` re-parses the PEM key with dkimpy's ASN.1 code on every message.

So this module keeps everything that defines the signature's *meaning* as dkimpy has it — message
splitting (``rfc822_parse``), relaxed header canonicalisation (``CanonicalizationPolicy``; the
body's is ``mail/dkim_canon.relaxed_body``, dkimpy's bytes in linear time, which dkimpy's verifier
uses too), header selection bottom-up with over-signing (``hash_headers`` / ``select_headers``), ``b=`` removal
(``RE_BTAG``) and folding (``fold``) — and re-assembles the same tag list as ``DKIM.sign``, so the
output is byte-for-byte what dkimpy would produce for the same ``t=``, except that the private-key
operation runs in OpenSSL. For the plain header blocks we compose (printable ASCII, CRLF), the
split, the canonical values and the selection are done here without dkimpy's regular expression
per line (``_plain_split``: a third of signing apart from RSA, issue 19); property tests hold
them to dkimpy's bytes (tests/dispatch/test_dkim_split.py), anything else goes to dkimpy.
Interoperability is proved by tests against dkimpy, Mail::DKIM and
OpenDKIM. dkimpy is pinned ``<2`` in pyproject.toml because these helpers are not in its ``__all__``.

A side benefit: the message is split and its body canonicalised and hashed once for all keys
(dual RSA + ed25519 signature).

Thread safety: a ``DkimSigner`` holds only immutable data and ``cryptography`` key objects, which
may be used from several threads at once; ``sign`` keeps its state in locals.

Processes: ``cryptography`` keeps the GIL during the RSA operation (two threads sign no faster
than one), so a bulletin fan-out signs in a ``SigningPool`` of worker processes, each holding
its own copy of the keys, loaded once when it starts (benchmarks/README.md, issue 19).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from mailgateway.errors import ConfigError, PolicyRefusal
from mailgateway.mail.dkim_canon import relaxed_body
from mailgateway.settings import DkimSettings

__all__ = ["ALGORITHMS", "OVERSIGNED_HEADERS", "SIGNED_HEADERS", "DkimKey", "DkimSigner", "SigningPool"]

log = logging.getLogger("mailgateway.dkim")

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")

# RFC 6376 §5.4.1: From MUST be signed; the others are the recommended set that our messages carry,
# plus Auto-Submitted (RFC 3834) so that a replay cannot remove the "do not answer me" marker.
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"reply-to",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"auto-submitted",
)
# RFC 6376 §8.15: listing a header once more than it occurs prevents adding a second one (a second
# From shown by some clients instead of the signed one). Every single-instance field that steers a
# reader or a gateway (author, recipients, subject, threading) is over-signed, present or not: an
# added Subject or In-Reply-To above our signed mail breaks the signature instead of re-targeting it.
OVERSIGNED_HEADERS: tuple[bytes, ...] = (
    b"from", b"to", b"cc", b"reply-to", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
)

# RFC 8301 §3.2: signers MUST use at least 1024 bits and SHOULD use 2048.
MIN_RSA_BITS = 1024

_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_HEADER_NAME = b"DKIM-Signature"


@dataclass(frozen=True)
class DkimKey:
    """One signing key: PEM (RSA PKCS#1 or PKCS#8; ed25519 PKCS#8) or, for ed25519, dkimpy's base64
    of the raw 32-byte seed (what ``dknewkey --ktype ed25519`` writes)."""

    selector: str
    algorithm: str
    private_key: bytes | str


@dataclass(frozen=True)
class _LoadedKey:
    selector: bytes
    algorithm: bytes
    sign_digest: Callable[[bytes], bytes]
    public_record: str


class DkimSigner:
    """Signs outbound messages for one domain with one or more keys (one DKIM-Signature each)."""

    def __init__(self, domain: str, keys: Sequence[DkimKey], *, clock: Callable[[], float] = time.time) -> None:
        if not domain or not domain.isascii() or any(c.isspace() or c in ";=" for c in domain):
            raise ConfigError([("dkim.domain", f"not a usable signing domain: {domain!r}")])
        if not keys:
            raise ConfigError([("dkim.keys", "at least one key is required")])
        self.domain = domain.lower().rstrip(".")
        self._domain = self.domain.encode("ascii")
        self._clock = clock
        problems: list[tuple[str, str]] = []
        loaded: list[_LoadedKey] = []
        for i, key in enumerate(keys):
            try:
                loaded.append(_load_key(key))
            except ValueError as exc:
                problems.append((f"dkim.keys[{i}]", str(exc)))
        if problems:
            raise ConfigError(problems)
        self._keys = tuple(loaded)
        # What a worker process needs to build the same signer (SigningPool); None when the
        # signer's clock is not the system's (a test clock cannot follow it into another process).
        self._recipe: tuple[str, tuple[DkimKey, ...]] | None = (
            (self.domain, tuple(keys)) if clock is time.time else None)

    @classmethod
    def from_settings(cls, settings: DkimSettings | None) -> DkimSigner | None:
        """The signer of ``[dkim]``, or None when outbound signing is not configured."""
        if settings is None or not settings.keys:
            return None
        keys: list[DkimKey] = []
        problems: list[tuple[str, str]] = []
        for i, key in enumerate(settings.keys):
            try:
                data = Path(key.private_key_file).read_bytes()
            except OSError as exc:
                problems.append((f"dkim.keys[{i}].private_key_file", f"cannot read key: {exc.strerror or exc}"))
                continue
            keys.append(DkimKey(key.selector, key.algorithm, data))
        if problems:
            raise ConfigError(problems)
        return cls(settings.domain, keys)

    @property
    def selectors(self) -> tuple[str, ...]:
        return tuple(k.selector.decode("ascii") for k in self._keys)

    def dns_record(self, selector: str) -> str:
        """The TXT value to publish at ``<selector>._domainkey.<domain>`` (RFC 6376 §3.6.1)."""
        for key in self._keys:
            if key.selector.decode("ascii") == selector:
                return key.public_record
        raise ConfigError([("dkim.keys", f"no key with selector {selector!r}")])

    def zone_line(self, selector: str) -> str:
        """The record in zone-file syntax, split in strings of at most 255 bytes (RFC 1035 §3.3.14):
        a 2048-bit RSA key does not fit in one."""
        value = self.dns_record(selector)
        chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
        return f"{selector}._domainkey.{self.domain}. IN TXT ( {chunks} )"

    def sign(self, message: bytes) -> bytes:
        """DKIM-Signature header fields (CRLF-terminated) to prepend to ``message``, one per key.

        Raises PolicyRefusal when the message cannot be signed meaningfully (no single From, or a
        header block that is not RFC 5322): such a message must not leave unsigned either.
        """
        plain = _plain_split(message)
        if plain is None:
            try:
                headers, body = _split(message)
            except dkim.MessageFormatError as exc:
                raise PolicyRefusal(f"message cannot be DKIM-signed: {exc}") from exc
        else:
            headers, body = plain
        names = [name.lower() for name, _value in headers]
        if names.count(b"from") != 1:
            raise PolicyRefusal("message cannot be DKIM-signed: it needs exactly one From header")
        # dkimpy's default_sign_headers order: as they occur in the message, then the over-signed ones.
        include = [n for n in names if n in SIGNED_HEADERS] + list(OVERSIGNED_HEADERS)
        # Only the fields we sign are hashed: canonicalising the others (Received...) is wasted work.
        signed = [h for h in headers if h[0].lower() in SIGNED_HEADERS]
        canonical_headers = (_RELAXED.canonicalize_headers(signed) if plain is None
                             else [(name.lower(), _relaxed_plain_value(value)) for name, value in signed])
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        timestamp = str(int(self._clock())).encode("ascii")
        return b"".join(self._signature(key, include, canonical_headers, body_hash, timestamp) for key in self._keys)

    def _signature(
        self,
        key: _LoadedKey,
        include: list[bytes],
        canonical_headers: list[tuple[bytes, bytes]],
        body_hash: bytes,
        timestamp: bytes,
    ) -> bytes:
        # Same tags, order and folding as dkimpy's DKIM.sign (v1.1): b= is folded onto its own line
        # so that inserting the signature does not re-fold the tags already hashed.
        fields = [
            (b"v", b"1"),
            (b"a", key.algorithm),
            (b"c", b"relaxed/relaxed"),
            (b"d", self._domain),
            (b"i", b"@" + self._domain),
            (b"q", b"dns/txt"),
            (b"s", key.selector),
            (b"t", timestamp),
            (b"h", b" : ".join(include)),
            (b"bh", body_hash),
            (b"b", b"0" * 60),
        ]
        unsigned = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_HEADER_NAME))
        unsigned = dkim.RE_BTAG.sub(b"\\1", unsigned)
        hasher = hashlib.sha256()
        # RFC 6376 §3.7: the signed header fields (bottom-up, dkimpy's ``select_headers``), then
        # this header with an empty b=, no final CRLF — what ``dkim.hash_headers`` hashes.
        for name, value in _select_headers(canonical_headers, include):
            hasher.update(name + b":" + value)
        (name, value), = _RELAXED.canonicalize_headers([(_HEADER_NAME, b" " + unsigned)])
        hasher.update(name + b":" + value.rstrip())
        fields[-1] = (b"b", base64.b64encode(key.sign_digest(hasher.digest())))
        value = b"; ".join(b"=".join(f) for f in fields) + b"\r\n"
        folded: bytes = dkim.fold(value, namelen=len(_HEADER_NAME))
        return _HEADER_NAME + b": " + folded


def _load_key(key: DkimKey) -> _LoadedKey:
    """Parse once, at start-up; raise ValueError with a reason an operator can act on."""
    if key.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {key.algorithm!r}")
    selector = key.selector.strip()
    if not selector or not selector.isascii() or any(c.isspace() or c in ";=" for c in selector):
        raise ValueError(f"not a usable selector: {key.selector!r}")
    data = key.private_key.encode("ascii", "replace") if isinstance(key.private_key, str) else key.private_key
    if key.algorithm == "rsa-sha256":
        rsa_key = _load_pem(data)
        if not isinstance(rsa_key, rsa.RSAPrivateKey):
            raise ValueError("rsa-sha256 needs an RSA private key (PEM, PKCS#1 or PKCS#8)")
        if rsa_key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {rsa_key.key_size} bits; RFC 8301 requires at least {MIN_RSA_BITS}")
        spki = rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

        def sign_rsa(digest: bytes) -> bytes:
            # RFC 6376 §3.3.1: RSASSA-PKCS1-v1_5 over the SHA-256 digest already computed.
            return rsa_key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))

        record = f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode('ascii')}"
        return _LoadedKey(selector.encode("ascii"), b"rsa-sha256", sign_rsa, record)
    ed_key = _load_ed25519(data)
    raw_public = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign_ed25519(digest: bytes) -> bytes:
        # RFC 8463 §3: PureEdDSA over the SHA-256 hash of the canonicalised headers.
        return ed_key.sign(digest)

    # RFC 8463 §4: p= is the raw 32-byte public key, not a SubjectPublicKeyInfo.
    record = f"v=DKIM1; k=ed25519; p={base64.b64encode(raw_public).decode('ascii')}"
    return _LoadedKey(selector.encode("ascii"), b"ed25519-sha256", sign_ed25519, record)


def _load_pem(data: bytes) -> object:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: an encrypted key (there is no passphrase: keys come from LoadCredential= files).
        raise ValueError(f"cannot load PEM private key: {exc}") from exc


def _load_ed25519(data: bytes) -> ed25519.Ed25519PrivateKey:
    if b"-----BEGIN" in data:
        key = _load_pem(data)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("ed25519-sha256 needs an Ed25519 private key")
        return key
    try:
        seed = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("ed25519 key is neither PEM nor base64 of a 32-byte seed") from exc
    if len(seed) != 32:
        raise ValueError(f"ed25519 seed must be 32 bytes, got {len(seed)}")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


# --- signing in worker processes (bulletin fan-out) ------------------------------------------

_T = TypeVar("_T")

# One signer per worker process, built by ``_start_worker`` from the parent's recipe.
_WORKER_SIGNER: DkimSigner | None = None


def _start_worker(domain: str, keys: tuple[DkimKey, ...]) -> None:
    global _WORKER_SIGNER
    _WORKER_SIGNER = DkimSigner(domain, keys)


def worker_signer() -> DkimSigner:
    """In a SigningPool worker: its signer (tasks run with ``SigningPool.run`` use it)."""
    assert _WORKER_SIGNER is not None, "signing worker started without its keys"
    return _WORKER_SIGNER


def _sign_in_worker(messages: list[bytes]) -> list[bytes | str]:
    return sign_each(worker_signer(), messages)


def _split(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse(message)``, without splitting the body into lines when that changes
    nothing: dkimpy splits the whole message on ``\\r?\\n`` and joins the body back with CRLF,
    which for a message without a bare LF gives the body's own bytes, the header block ending
    at the first CRLF CRLF (or at once, for a message starting with CRLF). Our messages are CRLF
    throughout (dispatch/mime.py) and a bulletin's carries base64 pictures: the split was ≈10 %
    of composing one (issue 19). Anything else (a bare LF anywhere, no body) goes to dkimpy."""
    end = message.find(b"\r\n\r\n")
    if end < 0 or message.startswith(b"\r\n") or message.count(b"\n") != message.count(b"\r\n"):
        headers, body = dkim.rfc822_parse(message)
        return headers, body
    headers, _ = dkim.rfc822_parse(message[:end + 4])
    return headers, message[end + 4:]


# What a header block may hold for ``_plain_split``: printable ASCII, blanks, CRLF line ends.
_PLAIN_HEADER_BYTES = bytes(range(0x20, 0x7F)) + b"\t\r\n"


def _plain_split(message: bytes) -> tuple[list[list[bytes]], bytes] | None:
    """``_split`` for the messages we compose (dispatch/mime.py): a header block of printable
    ASCII, blanks and CRLF line ends, each line a ``name:value`` field with a name free of blanks or
    the continuation of one. The same (headers, body) as dkimpy's ``rfc822_parse`` without its
    regular expression per line (issue 19: parsing and canonicalising the header fields was a third
    of signing once the RSA operation was left out). Anything else: None, and dkimpy parses it."""
    end = message.find(b"\r\n\r\n")
    if end <= 0 or message.count(b"\n") != message.count(b"\r\n"):
        return None
    block = message[:end]
    if block.translate(None, _PLAIN_HEADER_BYTES) or block.count(b"\r") != block.count(b"\r\n"):
        return None
    headers: list[list[bytes]] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not headers:
                return None
            headers[-1][1] += line + b"\r\n"
            continue
        colon = line.find(b":")
        if colon <= 0 or b" " in line[:colon] or b"\t" in line[:colon]:
            return None
        headers.append([line[:colon], line[colon + 1:] + b"\r\n"])
    return headers, message[end + 4:]


def _relaxed_plain_value(value: bytes) -> bytes:
    """RFC 6376 §3.4.2 relaxed canonical value (dkimpy's: unfold, compress blanks, strip) of a
    value ``_plain_split`` returned: only printable ASCII, blanks and CRLF, so splitting on
    whitespace is exactly unfolding and compressing."""
    return b" ".join(value.replace(b"\r\n", b"").split()) + b"\r\n"


def _select_headers(canonical: list[tuple[bytes, bytes]], include: list[bytes]) -> list[tuple[bytes, bytes]]:
    """dkimpy's ``select_headers`` for header names already lower-case (canonical): each name
    of ``include`` takes the next occurrence of that field from the bottom up (RFC 6376 §5.4.2),
    none once they are used up (over-signing). One dictionary instead of a scan per name."""
    positions: dict[bytes, list[int]] = {}
    for i, (name, _value) in enumerate(canonical):
        positions.setdefault(name, []).append(i)
    return [canonical[found.pop()] for name in include if (found := positions.get(name))]


def sign_each(signer: DkimSigner, messages: Sequence[bytes]) -> list[bytes | str]:
    """The DKIM-Signature fields of each message, or (str) why it cannot be signed (PolicyRefusal)."""
    out: list[bytes | str] = []
    for message in messages:
        try:
            out.append(signer.sign(message))
        except PolicyRefusal as exc:
            out.append(exc.reason)
    return out


def pool_size(configured: int) -> int:
    """``[bulletins] signing_processes``: 0 means one per CPU this process may run on."""
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class SigningPool:
    """Signs batches of messages in ``processes`` worker processes, keys loaded once per worker.

    ``submit`` returns at once; ``result`` waits. Nothing is lost when the pool cannot start or a
    worker dies: the batch is signed again in this process, and so is everything after it (the
    pool is not restarted under a fan-out that already lost one). Signatures do not depend on
    who computes them (same keys, same canonicalisation), only ``t=`` on the worker's clock.

    Workers are started with ``spawn``: forking a process that runs threads (the daemon) may copy
    a lock held by another thread. They exit when ``close`` is called, or when this process dies
    (their task pipe closes).
    """

    def __init__(self, signer: DkimSigner, processes: int = 0) -> None:
        self.signer = signer
        self.processes = pool_size(processes)
        self.fallbacks = 0  # batches signed here after the pool failed (tests, benchmark)
        self._executor: ProcessPoolExecutor | None = None
        recipe = signer._recipe
        if recipe is None:
            return
        try:
            self._executor = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=recipe)
        except Exception as exc:  # no processes allowed here: sign in this process
            log.warning("DKIM signing pool unavailable (%s); signing in the fan-out's own thread", exc)

    @property
    def in_process(self) -> bool:
        return self._executor is None

    def pids(self) -> list[int]:
        """The worker processes running now (operations, tests)."""
        executor = self._executor
        processes = getattr(executor, "_processes", None) or {}
        return [p.pid for p in processes.values() if p.pid is not None]

    def submit(self, messages: list[bytes]) -> Future[list[bytes | str]]:
        """Sign ``messages`` (``result`` gives the DKIM-Signature fields, or why one cannot be signed)."""
        return self.run(_sign_in_worker, (messages,), lambda: sign_each(self.signer, messages))

    def result(self, future: Future[list[bytes | str]], messages: list[bytes]) -> list[bytes | str]:
        """The signatures of ``messages`` (submitted as ``future``), signed here if the pool failed."""
        return self.wait(future, lambda: sign_each(self.signer, messages))

    def run(self, task: Callable[..., _T], args: tuple[object, ...], here: Callable[[], _T]) -> Future[_T]:
        """``task(*args)`` in a worker (a module-level function; it may use ``worker_signer()``),
        or ``here()`` in this thread, now, when the pool is not running."""
        if self._executor is not None:
            try:
                return self._executor.submit(task, *args)
            except Exception as exc:  # BrokenProcessPool, or it could not spawn: this process works
                self._give_up(exc)
        done: Future[_T] = Future()
        done.set_result(here())
        return done

    def wait(self, future: Future[_T], here: Callable[[], _T]) -> _T:
        """The result of ``run``; ``here()`` (the same work, in this thread) if the pool failed."""
        try:
            return future.result()
        except Exception as exc:
            # A worker died (killed, out of memory): the task is done again here, once; a
            # message is inserted only after it is signed, so nothing is lost or queued twice.
            # (An error of the task itself happens again here, and is raised.)
            self._give_up(exc)
            self.fallbacks += 1
            return here()

    def _give_up(self, exc: BaseException) -> None:
        if self._executor is None:
            return
        log.warning("DKIM signing pool failed (%s: %s); signing in the fan-out's own thread from now on",
                    type(exc).__name__, exc)
        executor, self._executor = self._executor, None
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SigningPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
