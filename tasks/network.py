"""The runbook's network checks, done in Python: `ping`, `curl -I`, `openssl s_client`, `traceroute`.

For the API host of the bot's exchange: DNS resolution (`socket.getaddrinfo`), TCP connect time, the time
of real API requests (httpx, one kept-alive connection, several samples with their spread) and the TLS
certificate (issuer, expiry, hostname check via `ssl`). Every failure is a finding in the result, never
an exception, and `NetworkReport.verdict` says where the trouble is: the network (name resolution,
connecting), the exchange (errors, slow answers) or rate limiting.
"""

from __future__ import annotations

import socket
import ssl
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from prefect import task

from tasks import NO_CACHE_POLICY

# A cheap, documented read (weight 2) answered by every Hyperliquid API, real or sandbox.
PROBE_BODY = {"type": "allMids"}


@dataclass(frozen=True)
class Spread:
    """min / median / max / standard deviation of samples, in milliseconds."""

    count: int
    minimum: float
    median: float
    maximum: float
    stdev: float

    @classmethod
    def of(cls, samples: list[float]) -> Spread | None:
        if not samples:
            return None
        return cls(len(samples), round(min(samples), 1), round(statistics.median(samples), 1),
                   round(max(samples), 1), round(statistics.stdev(samples), 1) if len(samples) > 1 else 0.0)

    def __str__(self) -> str:
        return (f"min {self.minimum:.0f} / median {self.median:.0f} / max {self.maximum:.0f} ms "
                f"(stdev {self.stdev:.0f} ms, n={self.count})")


def endpoint(url: str) -> tuple[str, int, str]:
    """(host, port, scheme) of a base URL; raises ValueError for a URL without a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), parts.scheme


@dataclass
class DnsResult:
    host: str
    addresses: list[str] = field(default_factory=list)
    elapsed_ms: float | None = None
    error: str | None = None

    def summary(self) -> str:
        if self.error:
            return f"DNS: {self.host} does not resolve ({self.error})"
        return f"DNS: {self.host} -> {', '.join(self.addresses[:4])} in {self.elapsed_ms:.0f} ms"


@task(name="resolve API host (DNS)", cache_policy=NO_CACHE_POLICY)
def resolve_host(url: str) -> DnsResult:
    """Runbook `ping api.hyperliquid.xyz`, first half: does the name resolve, and how fast."""
    host, port, _ = endpoint(url)
    result = DnsResult(host=host)
    started = time.perf_counter()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as error:
        result.error = str(error) or type(error).__name__
        return result
    result.elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    result.addresses = list(dict.fromkeys(info[4][0] for info in infos))
    return result


@dataclass
class TcpResult:
    host: str
    port: int
    samples_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def spread(self) -> Spread | None:
        return Spread.of(self.samples_ms)

    @property
    def reachable(self) -> bool:
        return bool(self.samples_ms)

    def summary(self) -> str:
        attempts = len(self.samples_ms) + len(self.failures)
        if not self.samples_ms:
            return f"TCP {self.host}:{self.port}: no connection in {attempts} attempts ({self.failures[0]})"
        failed = f", {len(self.failures)} failed ({self.failures[0]})" if self.failures else ""
        return f"TCP connect {self.host}:{self.port}: {self.spread}{failed}"


@task(name="measure TCP connect time", cache_policy=NO_CACHE_POLICY)
def measure_tcp_connect(url: str, samples: int, timeout_seconds: float) -> TcpResult:
    """Runbook `ping`, second half: the round trip of a TCP handshake with the API host, `samples` times."""
    host, port, _ = endpoint(url)
    result = TcpResult(host=host, port=port)
    for _ in range(samples):
        started = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=timeout_seconds):
                result.samples_ms.append(round((time.perf_counter() - started) * 1000, 2))
        except TimeoutError:
            result.failures.append(f"timed out after {timeout_seconds:g}s")
        except OSError as error:
            result.failures.append(error.strerror or type(error).__name__)
    return result


@dataclass
class HttpSample:
    elapsed_ms: float
    status: int | None = None
    error: str | None = None


@dataclass
class HttpResult:
    url: str
    samples: list[HttpSample] = field(default_factory=list)

    @property
    def answered(self) -> list[HttpSample]:
        return [s for s in self.samples if s.status is not None]

    @property
    def spread(self) -> Spread | None:
        """Spread of the requests that got an answer (any status)."""
        return Spread.of([s.elapsed_ms for s in self.answered])

    def count(self, predicate: Callable[[HttpSample], bool]) -> int:
        return sum(1 for s in self.samples if predicate(s))

    @property
    def rate_limited(self) -> int:
        return self.count(lambda s: s.status == 429)

    @property
    def server_errors(self) -> int:
        return self.count(lambda s: s.status is not None and s.status >= 500)

    @property
    def timeouts(self) -> int:
        return self.count(lambda s: s.error is not None and "timed out" in s.error)

    @property
    def failures(self) -> int:
        return self.count(lambda s: s.status is None)

    def summary(self) -> str:
        statuses = sorted({str(s.status) for s in self.answered})
        errors = sorted({s.error for s in self.samples if s.error})
        parts = [f"HTTP POST {self.url}: {len(self.answered)}/{len(self.samples)} answered"]
        if statuses:
            parts.append(f"status {', '.join(statuses)}")
        if self.spread:
            parts.append(str(self.spread))
        if errors:
            parts.append("errors: " + "; ".join(errors))
        return ", ".join(parts)


@task(name="time API requests", cache_policy=NO_CACHE_POLICY)
def measure_https(url: str, samples: int, timeout_seconds: float) -> HttpResult:
    """Runbook `curl -I https://api.hyperliquid.xyz`: `samples` real info requests, timed one after another."""
    base = url.rstrip("/")
    result = HttpResult(url=f"{base}/info")
    with httpx.Client(timeout=timeout_seconds, headers={"Content-Type": "application/json"}) as client:
        for _ in range(samples):
            started = time.perf_counter()
            try:
                response = client.post(f"{base}/info", json=PROBE_BODY)
                sample = HttpSample(0.0, status=response.status_code)
            except httpx.TimeoutException:
                sample = HttpSample(0.0, error=f"timed out after {timeout_seconds:g}s")
            except httpx.HTTPError as error:
                detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                sample = HttpSample(0.0, error=detail)
            sample.elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
            result.samples.append(sample)
    return result


@dataclass
class TlsResult:
    host: str
    port: int
    tls: bool
    verified: bool = False
    hostname_ok: bool | None = None
    issuer: str | None = None
    subject: str | None = None
    not_after: datetime | None = None
    error: str | None = None

    @property
    def days_left(self) -> float | None:
        if self.not_after is None:
            return None
        return round((self.not_after - datetime.now(UTC)).total_seconds() / 86400, 1)

    @property
    def problem(self) -> str | None:
        """What is wrong with TLS, or None (plain HTTP has no TLS to be wrong)."""
        if not self.tls:
            return None
        if self.error:
            return self.error
        if self.days_left is not None and self.days_left < 0:
            return f"the certificate expired on {self.not_after:%Y-%m-%d}"
        return None

    def summary(self) -> str:
        if not self.tls:
            return f"TLS: no TLS (plain HTTP) to {self.host}:{self.port}"
        if self.error and self.issuer is None:
            return f"TLS {self.host}:{self.port}: {self.error}"
        expiry = f"expires {self.not_after:%Y-%m-%d} ({self.days_left:g} days)" if self.not_after else "expiry unknown"
        check = "hostname matches" if self.hostname_ok else "HOSTNAME DOES NOT MATCH"
        verdict = "verified" if self.verified else f"NOT verified: {self.error}"
        return (f"TLS {self.host}:{self.port}: issuer {self.issuer}, subject {self.subject}, {expiry}, {check}, "
                f"{verdict}")


def _name(parts: tuple) -> str:  # the ((("organizationName", "X"),), ...) shape of getpeercert()
    fields = dict(item for rdn in parts for item in rdn)
    return ", ".join(f"{key}={fields[key]}" for key in ("commonName", "organizationName") if key in fields) or "?"


def _peer_cert(host: str, port: int, timeout: float, context: ssl.SSLContext) -> dict:
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.getpeercert() or {}


@task(name="check TLS certificate", cache_policy=NO_CACHE_POLICY)
def check_tls(url: str, timeout_seconds: float, cafile: str | None = None) -> TlsResult:
    """Runbook `openssl s_client -connect api.hyperliquid.xyz:443`: issuer, expiry, hostname, chain.

    The certificate is verified against the system's trust store (or `cafile`). If verification fails
    only on the hostname, the certificate is read again without that check so the report still names
    its issuer and expiry.
    """
    host, port, scheme = endpoint(url)
    if scheme != "https":
        return TlsResult(host=host, port=port, tls=False)
    result = TlsResult(host=host, port=port, tls=True)
    context = ssl.create_default_context(cafile=cafile)
    try:
        cert = _peer_cert(host, port, timeout_seconds, context)
        result.verified, result.hostname_ok = True, True
    except ssl.SSLCertVerificationError as error:
        result.error = error.verify_message or str(error)
        # 62 / 64: hostname / IP address mismatch (X509_V_ERR_HOSTNAME_MISMATCH, ..._IP_ADDRESS_MISMATCH)
        mismatch = error.verify_code in (62, 64) or "mismatch" in (error.verify_message or "").lower()
        result.hostname_ok = False if mismatch else None
        if not mismatch:
            return result
        lenient = ssl.create_default_context(cafile=cafile)
        lenient.check_hostname = False
        try:
            cert = _peer_cert(host, port, timeout_seconds, lenient)
        except (OSError, ssl.SSLError):
            return result
    except ssl.SSLError as error:
        result.error = f"TLS handshake failed: {error.reason or error}"
        return result
    except TimeoutError:
        result.error = f"no TLS handshake within {timeout_seconds:g}s"
        return result
    except OSError as error:
        result.error = f"cannot connect: {error.strerror or type(error).__name__}"
        return result
    result.issuer = _name(cert.get("issuer", ()))
    result.subject = _name(cert.get("subject", ()))
    if cert.get("notAfter"):
        result.not_after = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), UTC)
    return result


@dataclass
class NetworkReport:
    """Everything the network checks saw of one API host, and where they put the blame."""

    url: str
    dns: DnsResult
    tcp: TcpResult | None
    http: HttpResult | None
    tls: TlsResult | None

    def verdict(self, slow_connect_ms: float, slow_answer_seconds: float) -> str:
        """One of: dns-failure, unreachable, slow-network, rate-limited, exchange-error, exchange-slow, ok."""
        if self.dns.error:
            return "dns-failure"
        if self.tcp is not None and not self.tcp.reachable:
            return "unreachable"
        if self.http is not None and self.http.samples and not self.http.answered and not self.http.timeouts:
            return "unreachable"  # connections refused or reset: nothing answers at the API port
        spread = self.tcp.spread if self.tcp else None
        if spread is not None and spread.median > slow_connect_ms:
            return "slow-network"
        if self.http is not None:
            if self.http.rate_limited:
                return "rate-limited"
            if self.http.server_errors or self.http.timeouts:
                return "exchange-error"
            answer = self.http.spread
            if answer is not None and answer.median > slow_answer_seconds * 1000:
                return "exchange-slow"
        return "ok"

    def rows(self) -> list[list[str]]:
        rows = [["DNS", self.dns.summary()]]
        for name, part in (("TCP", self.tcp), ("HTTP", self.http), ("TLS", self.tls)):
            if part is not None:
                rows.append([name, part.summary()])
        return rows


def check_network(url: str, samples: int, timeout_seconds: float, with_tls: bool = True) -> NetworkReport:
    """DNS first (nothing else can work without it), then TCP, HTTP and TLS checks concurrently.

    Call from a flow: the checks are Prefect tasks.
    """
    dns = resolve_host(url)
    if dns.error:
        return NetworkReport(url, dns, None, None, None)
    tcp = measure_tcp_connect.submit(url, samples, timeout_seconds)
    http = measure_https.submit(url, samples, timeout_seconds)
    tls = check_tls.submit(url, timeout_seconds) if with_tls else None
    return NetworkReport(url, dns, tcp.result(), http.result(), tls.result() if tls is not None else None)
