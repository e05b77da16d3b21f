"""🔐 API Authentication Failed (RUNBOOK.md), as a flow. Read-only: it changes nothing.

Immediate actions: "Check Credentials" — the key is where the configuration says (file or environment
variable), parses, and derives an address (eth-account); that address is the account itself (the master
key: it works, but it can withdraw) or an agent approved for it (userRole; extraAgents for the expiry).
"Test API Connection" — a signed no-op sent with the official SDK shows whether the exchange accepts the
signature. "Check Network/Proxy" — DNS, TCP and the API host's TLS certificate (issuer, expiry, hostname).
Investigation: the auth lines of the bot's error log, summarised.

The finding says which of these broke and the runbook's recovery step for it: rotate the key, re-approve
the agent, fix the address, fix the network/proxy. The key itself is never returned by the tasks that
read it (tasks/keys.py), so it cannot reach a log, the Slack thread, the report or the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prefect import flow

from runbook import journal as j
from runbook.markdown import table
from tasks.futures import settle
from tasks.hyperliquid import Agent, get_extra_agents, get_user_role
from tasks.incident import IncidentRun, Outcome
from tasks.keys import KeyCheck, NoopResult, inspect_key, signed_noop
from tasks.logs import RecentMatches, recent_matches
from tasks.network import NetworkReport, check_network
from tasks.probes import HealthReport, check_health, dig

ALERT = "api-auth-failed"

MASTER = "master key"
AGENT = "valid agent"
WRONG_KEY = "wrong key"
OTHER_ACCOUNT = "key for a different account"
UNAPPROVED = "unapproved agent"
NO_KEY = "key unusable"
UNKNOWN = "key not verified"
KEY_OK = (MASTER, AGENT)

WITHDRAW_WARNING = ("the bot signs with the account's master key, which can withdraw funds: give it an agent "
                    "(API wallet) key instead, approved with approveAgent")


@dataclass
class KeyVerdict:
    kind: str
    detail: str
    recovery: list[str] = field(default_factory=list)


def judge_key(key: KeyCheck, account: str, role: tuple[str, str | None] | None, role_error: str | None,
              agents: list[Agent] | None) -> KeyVerdict:
    """Which key this is for the configured account: master, valid agent, wrong, another account's, unapproved."""
    if not key.ok:
        return KeyVerdict(NO_KEY, key.error or "no key", [
            "restore the key where the bot expects it (hyperliquid.key_file or key_env), readable by the bot",
            "rotate the key if it may have leaked: approve a new agent from the master account"])
    signer = key.address.lower()
    if not account:
        return KeyVerdict(UNKNOWN, "no account address is configured (hyperliquid.account_address)",
                          ["fix the address: set hyperliquid.account_address to the account the bot trades"])
    if signer == account:
        return KeyVerdict(MASTER, f"the key is the account's own key ({key.address})", [WITHDRAW_WARNING])
    if role is None:
        return KeyVerdict(UNKNOWN, f"the key derives {key.address}, but its role could not be read: {role_error}",
                          ["re-run this flow once the exchange answers"])
    name, master = role
    if name == "agent" and master == account:
        return KeyVerdict(AGENT, f"the key derives {key.address}, an agent approved for {account}")
    if name in ("agent", "subAccount") and master:
        what = "an agent" if name == "agent" else "a sub-account"
        return KeyVerdict(OTHER_ACCOUNT, f"the key derives {key.address}, {what} of {master}, not of {account}", [
            f"fix the address: this key signs for {master}; if that is the account the bot should trade, set "
            f"hyperliquid.account_address (and the bot's config) to it",
            f"otherwise give the bot a key approved for {account} (rotate the key)"])
    if name in ("user", "vault"):
        return KeyVerdict(OTHER_ACCOUNT, f"the key derives {key.address}, which is an account of its own "
                          f"({name}), not {account} nor an agent of it", [
                              f"fix the address if {key.address} is the account to trade (and then prefer an "
                              "agent key: a master key can withdraw)",
                              f"otherwise give the bot a key approved for {account} (rotate the key)"])
    listed = next((a for a in agents or [] if a.address == signer), None)
    if listed is not None:
        until = f"{listed.valid_until:%Y-%m-%d %H:%M} UTC" if listed.valid_until else "no expiry given"
        why = f"its approval expired ({until})" if listed.expired else \
            f"it is listed as agent {listed.name!r} (valid until {until}) but the exchange does not accept it " \
            "(approval revoked or pruned)"
        return KeyVerdict(UNAPPROVED, f"the key derives {key.address}, an agent of {account}, but {why}", [
            f"re-approve the agent: approveAgent for {key.address} from the master account {account} "
            "(named, with a validUntil that is not too close), or approve a new agent and rotate the key",
            "then restart the bot so it signs again, and re-run this flow to verify"])
    declared = (f"; the key file says it belongs to {key.declared_address}" if key.declared_mismatch else "")
    return KeyVerdict(WRONG_KEY, f"the key derives {key.address}, which is neither {account} nor an agent of it "
                      f"(userRole: {name}){declared}", [
                          "rotate the key: put the bot's approved agent key back, or approve a new agent from "
                          f"the master account {account} and give the bot its key",
                          "then restart the bot and re-run this flow to verify"])


@dataclass
class Findings:
    key: KeyCheck
    verdict: KeyVerdict
    noop: NoopResult | None
    health: HealthReport
    network: NetworkReport | None
    network_error: str | None
    auth_lines: RecentMatches | None


def check(run: IncidentRun) -> Findings:
    """Credentials, the exchange's answer to a signed no-op, the network and TLS, the error log — concurrently."""
    bot, infra = run.bot, run.settings.infra
    account = bot.hyperliquid.account_address
    key_check = inspect_key.submit(bot)
    noop = signed_noop.submit(bot)
    health = check_health.submit(bot)
    since = datetime.now(UTC) - timedelta(minutes=infra.recent_log_minutes)
    lines = recent_matches.submit(bot.path(bot.error_log_file), infra.auth_pattern, since)
    try:
        network, network_error = check_network(bot.hyperliquid.api_url, infra.network_samples,
                                               infra.network_timeout_seconds), None
    except ValueError as error:
        network, network_error = None, str(error)
    key = key_check.result()
    role = agents = role_error = None
    if key.ok and account and key.address.lower() != account:
        # userRole weighs 60 on the exchange's rate limit: asked once, not retried.
        role, role_error = settle(get_user_role.with_options(retries=0).submit(bot.hyperliquid, key.address))
        if role is not None and role[0] == "missing":
            agents, _ = settle(get_extra_agents.with_options(retries=0).submit(bot.hyperliquid))
    (n, _), (h, herr), (auth, _) = (settle(x) for x in (noop, health, lines))
    if h is None:
        h = HealthReport(url=bot.health_url, reachable=False, error=herr)
    return Findings(key, judge_key(key, account, role, role_error, agents), n, h, network, network_error, auth)


def record(run: IncidentRun, seen: Findings) -> None:
    key = seen.key
    run.add_evidence("Credentials", table(["", ""], [
        ["where", key.source or "-"], ["derived address", key.address or "-"],
        ["configured account", run.bot.hyperliquid.account_address or "(none)"],
        ["key", f"{seen.verdict.kind}: {seen.verdict.detail}"],
    ] + [["warning", w] for w in key.warnings]))
    run.add_evidence("Signed no-op", seen.noop.summary() if seen.noop else "not sent")
    if seen.network is not None:
        run.add_evidence(f"Network and TLS to {seen.network.url}", table(["check", "result"], seen.network.rows()))
    else:
        run.add_evidence("Network and TLS", f"not checked: {seen.network_error}")
    lines = seen.auth_lines
    if lines is not None:
        body = lines.error or f"{lines.matches} lines matching `{lines.pattern}` since {lines.since:%H:%M} UTC"
        if lines.last:
            body += "\n\n```\n" + "\n".join(f"{s} {m}" for s, m in lines.last) + "\n```"
        run.add_evidence("Auth lines of the error log", body)
    run.add_evidence("Bot health", f"{seen.health.summary()}; api_auth "
                     f"{dig(seen.health.body or {}, run.bot.fields.api_auth) or 'not reported'}")


def broken(run: IncidentRun, seen: Findings) -> list[tuple[str, list[str]]]:
    """(what broke, recovery steps) for everything that fails now; empty when authentication works."""
    found: list[tuple[str, list[str]]] = []
    if seen.verdict.kind not in KEY_OK:
        found.append((f"{seen.verdict.kind}: {seen.verdict.detail}", seen.verdict.recovery))
    tls = seen.network.tls if seen.network else None
    if tls is not None and tls.problem:
        found.append((f"TLS to {tls.host}: {tls.problem}", [
            "fix the network/proxy: a proxy or middlebox presenting its own certificate, a missing CA bundle, "
            "or a wrong system clock (check `date`)"]))
    noop = seen.noop
    if noop is not None and not noop.accepted and (seen.verdict.kind in KEY_OK or not noop.reached):
        if noop.reached:
            found.append((f"exchange rejection: {noop.summary()}", [
                "check the exchange's answer above: nonce, signing network (mainnet vs testnet URL), account state"]))
        else:
            found.append((f"network: {noop.summary()}", [
                "fix the network/proxy between the bot host and the API (see the network checks)"]))
    bot_says = dig(seen.health.body or {}, run.bot.fields.api_auth)
    if bot_says == "fail" and not found:
        found.append(("the bot reports auth failing although the configured key works", [
            "the bot may be using another key than the one configured here: compare, then restart the bot"]))
    return found


@flow(name="api-auth-failed",
      description="Runbook: API Authentication Failed — key found, parsed, address derived, approved (userRole), "
                  "accepted by the exchange (signed no-op), TLS, auth log lines; says what broke and how to fix it.")
def api_auth_failed(bot: str | None = None, config: str | None = None, incident_id: int | None = None) -> Outcome:
    """Find which part of authentication broke and the recovery step for it. The key is never shown.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers (opened by the watcher); a new one otherwise
    """
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.tell("OPEN", "Authentication with Hyperliquid API failed",
             ["check credentials", "test the API connection", "check network/proxy"], mention_level="L1")
    run.start_response()
    seen = check(run)
    record(run, seen)
    run.note(f"key: {seen.verdict.kind} — {seen.verdict.detail}; "
             f"{seen.noop.summary() if seen.noop else 'no-op not sent'}")
    problems = broken(run, seen)
    if not problems:
        warning = f" WARNING: {WITHDRAW_WARNING}." if seen.verdict.kind == MASTER else ""
        return run.resolve(j.FALSE_POSITIVE, f"authentication works: {seen.verdict.detail} ({seen.key.source}) and "
                           f"{seen.noop.summary() if seen.noop else 'the exchange was not asked'}.{warning}")
    what = "; ".join(problem for problem, _ in problems)
    steps = [step for _, recovery in problems for step in recovery]
    return run.escalate("L1", f"Authentication broken — {what}.", steps)
