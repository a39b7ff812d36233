"""DKIM signing cost per message: dkimpy's pure-Python RSA vs DkimSigner (OpenSSL RSA, ed25519, both).

The README's "Benchmarks" table: the 10,000-message bulletin fan-out needs ≥ 1,000 signed msg/s, which dkimpy's own RSA
(≈5.7 ms per message) cannot give. Each variant signs the same N personalised messages (~2.4 KB,
relaxed/relaxed); every signature of the last message is verified with dkimpy, so a fast but wrong
signer cannot win. Run: ``.venv/bin/python benchmarks/dkim_sign.py [--messages 500]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dkim

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support: key generation

from mailgateway.dispatch.dkim import SIGNED_HEADERS, DkimSigner
from tests.support.dkim import dkimpy_verify, ed25519_key, rsa_key, sample_message, zone

BODY = (
    "Bonjour,\r\n\r\nLe CERT Santé signale une vulnérabilité critique (CVE-2026-12345) affectant les "
    "passerelles VPN. Merci d'appliquer les correctifs sous 72 heures.\r\n\r\n"
) * 8


def messages(n: int) -> list[bytes]:
    return [
        sample_message(to=f"ssi{i}@etablissement{i % 97}.test", body=f"Destinataire n°{i}\r\n{BODY}") for i in range(n)
    ]


def measure(name: str, sign: Callable[[bytes], bytes], batch: list[bytes]) -> tuple[str, list[float], bytes]:
    sign(batch[0])  # warm-up (imports, key caches)
    times: list[float] = []
    last = b""
    for message in batch:
        started = time.perf_counter()
        last = sign(message)
        times.append(time.perf_counter() - started)
    return name, times, last + batch[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    batch = messages(args.messages)
    rsa, ed = rsa_key(), ed25519_key()
    records = zone(rsa, ed)
    include = [h for h in SIGNED_HEADERS if h in (b"from", b"to", b"subject", b"date", b"message-id")]

    def dkimpy_rsa(message: bytes) -> bytes:
        signature: bytes = dkim.sign(
            message, b"rsa", b"ars.test", rsa.dkimpy_key,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=[*include, b"from"],
        )  # fmt: skip
        return signature

    rows = [
        measure("dkimpy rsa-sha256 (pure Python)", dkimpy_rsa, batch),
        measure("DkimSigner rsa-sha256 (OpenSSL)", DkimSigner("ars.test", [rsa.signing_key()]).sign, batch),
        measure("DkimSigner ed25519-sha256", DkimSigner("ars.test", [ed.signing_key()]).sign, batch),
        measure(
            "DkimSigner rsa + ed25519 (dual)",
            DkimSigner("ars.test", [rsa.signing_key(), ed.signing_key()]).sign,
            batch,
        ),
    ]
    # Ratios on the median: other processes on a shared machine inflate the mean and the tail.
    baseline = statistics.median(rows[0][1])
    print(f"{args.messages} messages of ~{len(batch[0]) // 100 / 10:.1f} KB, relaxed/relaxed, 2048-bit RSA")
    print(f"{'signer':36} {'mean ms':>8} {'p50 ms':>8} {'p95 ms':>8} {'msg/s':>8} {'p50 vs dkimpy':>14}")
    for name, times, last in rows:
        for idx in range(last.count(b"DKIM-Signature:")):
            assert dkimpy_verify(last, records, idx), f"{name}: signature {idx} does not verify"
        mean = statistics.mean(times)
        p95 = statistics.quantiles(times, n=20)[-1]
        print(
            f"{name:36} {mean * 1e3:8.3f} {statistics.median(times) * 1e3:8.3f} {p95 * 1e3:8.3f} "
            f"{1 / mean:8.0f} {baseline / statistics.median(times):13.1f}x"
        )


if __name__ == "__main__":
    main()
