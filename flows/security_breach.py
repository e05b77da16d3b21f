"""🔒 Security Breach Suspected (RUNBOOK.md "Emergency Procedures"), as a flow.

0. Forensic snapshot first, while the bot still runs: process list, the bot's open network connections,
   recent logins, interfaces, program-file hashes, key-file metadata — nothing has changed yet.
1. Isolate System — given as an instruction for a person (the interfaces and the command): this system
   never takes a network interface down by itself (it would cut off the people responding, too).
   The bot is stopped (verified PID, `kill` policy) so a compromised key stops trading from this host.
4. Forensic Analysis — the evidence backup, with the snapshot inside as FORENSICS.json; the timeline
   goes into the incident report.
2. Secure Keys — zeroize: the bot's configured key files are overwritten and removed, only after approval
   (`[policy] zeroize`, default approve; or `--yes`), recording the path, size, fingerprint and public
   address of each — never the key.
3. Change All Credentials — the rotation checklist: API keys (the agent to revoke, by address), alert
   channel tokens, SSH keys (the authorized_keys files on this host).
Internal and stakeholder notifications; the incident ends escalated: people rotate the credentials.
"""

from __future__ import annotations

import pwd
import time
from pathlib import Path

from prefect import flow

from runbook import journal as j
from runbook.incident import IncidentRun, Outcome
from runbook.markdown import table
from runbook.redact import REDACTED
from runbook.settings import resolve_secret
from tasks.evidence import BackupError, BackupResult, backup_evidence
from tasks.exchange import KeyUnavailable, load_signing_key
from tasks.forensics import ForensicSnapshot, forensic_snapshot
from tasks.futures import settle
from tasks.notify import StakeholderUpdate, notify_stakeholders
from tasks.process import ProcessError, locate_bot, stop_process
from tasks.zeroize import ZeroizeRecord, key_targets, zeroize_keys

ALERT = "security-breach"


def _known_secrets(run: IncidentRun) -> list[str | None]:
    values: list[str | None] = []
    for secret in (run.settings.slack.token, run.settings.intake.token):
        try:
            values.append(resolve_secret(secret, None))
        except Exception:  # noqa: BLE001
            pass
    return values


def _without_secrets(text: str, secrets: list[str | None]) -> str:
    """The known secret values out; not the shape rules (they would blank the snapshot's SHA-256 file hashes;
    command lines were redacted by shape when collected)."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, REDACTED)
    return text


def isolation_instruction(snapshot: ForensicSnapshot | None) -> str:
    interfaces = [i for i in (snapshot.interfaces if snapshot else []) if not i.get("loopback")]
    rows = table(["interface", "up", "addresses"], [[i["name"], "yes" if i["up"] else "no", ", ".join(i["addresses"])]
                                                     for i in interfaces]) if interfaces else "_none found_"
    names = [i["name"] for i in interfaces if i["up"]] or ["<interface>"]
    return ("**This system never takes a network interface down by itself.** If the breach is confirmed and "
            "you have console (out-of-band) access to this host, isolate it:\n\n"
            + "\n".join(f"    sudo ip link set {name} down" for name in names)
            + f"\n\n(the runbook's `sudo ifconfig eth0 down`). Network interfaces of this host:\n\n{rows}")


def _ssh_keys() -> list[str]:
    found = []
    for user in pwd.getpwall():
        path = Path(user.pw_dir) / ".ssh" / "authorized_keys"
        try:
            lines = [x for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]
        except OSError:
            continue
        found.append(f"`{path}` ({len(lines)} key(s), user {user.pw_name})")
    return found


def rotation_checklist(run: IncidentRun, zeroized: list[ZeroizeRecord]) -> str:
    account = run.bot.hyperliquid
    agents = sorted({r.address for r in zeroized if r.address})
    if not agents:  # not zeroized: the key is still there to tell which address it signs for
        try:
            agents = [load_signing_key(run.bot).address.lower()]
        except KeyUnavailable:
            pass
    agent_text = ", ".join(f"`{a}`" for a in agents) or "the bot's signing key"
    items = [
        "**API keys**",
        f"- [ ] Revoke {agent_text} for account `{account.account_address or '?'}` on Hyperliquid (API / agent "
        "wallets, signed by the master wallet); until then the key can still trade for the account",
        "- [ ] Create a new agent key, approve it, and write it to the bot's key file (mode 0600); never reuse the old one",
        "- [ ] If the master wallet's key could have been exposed: move the funds to a new wallet",
        "- [ ] Review the account's fills, orders and transfers since the first suspicious event (timeline above)",
        "**Alert channel tokens**",
        "- [ ] Rotate the Slack bot token (`[slack] token` / the Prefect Secret block `token_block`)",
        "- [ ] Rotate the webhook intake token (`[intake] token`) and update Alertmanager / Grafana",
        "- [ ] Rotate the Prefect API key and any other secret in `RUNBOOK_*` variables",
        "**SSH keys**",
        "- [ ] Replace the SSH keys allowed on this host: " + ("; ".join(_ssh_keys()) or "no authorized_keys found"),
        "- [ ] Replace the keys this host uses to reach others (~/.ssh/id_*) and revoke the old ones there",
        "**Then**",
        "- [ ] Preserve system logs (/var/log) beside the evidence archive",
        "- [ ] Contact authorities if funds were stolen",
    ]
    return "\n".join(items)


@flow(name="security-breach",
      description="Runbook: Security Breach Suspected — forensic snapshot, stop the bot, preserve evidence, "
                  "zeroize keys (approval), rotation checklist, isolation instruction, notify.")
def security_breach(bot: str | None = None, config: str | None = None, incident_id: int | None = None,
                    assume_yes: bool = False) -> Outcome:
    """Contain a suspected compromise of the bot's host or keys.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers; a new one otherwise
        assume_yes: a person's yes given up front (`runbook run security-breach --yes`): answers the
            approvals (stop, zeroize) without pausing; never overrides a dry-run policy
    """
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.start_response()
    run.tell("OPEN", "Security breach suspected", ["forensic snapshot", "stop the bot", "preserve evidence",
                                                   "secure keys (approval)", "rotate credentials"], mention_level="L1")
    secrets = _known_secrets(run)

    # Forensics before anything changes: the bot's connections exist only while it runs.
    snapshot, snapshot_error = settle(forensic_snapshot.submit(run.bot))
    if snapshot is not None:
        run.add_evidence("Forensic timeline", snapshot.markdown())
        run.note(f"forensic snapshot: {len(snapshot.processes)} processes, {len(snapshot.bot_connections)} bot "
                 f"connections, {len(snapshot.logins)} login records")
    else:
        run.add_evidence("Forensic timeline", f"**The forensic snapshot failed:** {snapshot_error}")
    run.add_evidence("Isolate the system (a person's step)", isolation_instruction(snapshot))

    stopped, stop_text = _stop_bot(run, assume_yes)

    extra = {"FORENSICS.json": _without_secrets(snapshot.to_json().decode(), secrets).encode()} if snapshot else None
    backup: BackupResult | None = None
    try:
        backup = backup_evidence(run.bot_name, run.bot, run.settings.backup, extra)
        run.act("backup", f"evidence archived (with FORENSICS.json): {backup.summary()}", detail=backup.to_dict())
        run.add_evidence("Evidence archive", backup.markdown())
    except BackupError as error:
        run.act("backup", f"evidence backup failed: {error}", ok=False)
        run.add_evidence("Evidence archive", f"**The evidence backup failed:** {error}")

    zeroized, keys_text, keys_failed = _secure_keys(run, assume_yes)
    run.add_evidence("Credential rotation checklist", rotation_checklist(run, zeroized))
    run.tell("INVESTIGATING", f"Bot: {stop_text}. Keys: {keys_text}.",
             ["rotate every credential on the checklist in the incident report", "isolate the host if confirmed"])

    update = StakeholderUpdate(
        severity=run.alert.severity.value,
        brief_description=f"Suspected security breach of the trading system (bot {run.bot_name}).",
        impact_on_trading=("Trading stopped" if stopped else "Trading NOT stopped") + f"; keys: {keys_text}.",
        downtime_duration="ongoing until credentials are rotated and the host is cleared",
        identified_cause="under investigation (forensic evidence preserved)",
        steps_taken=list(run.actions_taken),
        preventive_measures="credential rotation now; hardening decided in the post-incident review",
        status="halted: trading stopped pending the security investigation",
        on_call_engineer=run.settings.slack.escalation.get("L1", "the on-call engineer"),
    )
    notify_stakeholders(run.settings.slack, run.settings.journal_url, run.incident_id, update)

    failed = not stopped or backup is None or keys_failed
    summary = (f"Security breach suspected. Bot: {stop_text}. Evidence: "
               + (f"{backup.path}" if backup else "NOT preserved") + f". Keys: {keys_text}. "
               "Credentials must be rotated by people (checklist in the report); isolating the host is a "
               "person's decision.")
    next_steps = ([] if stopped else [f"STOP THE BOT BY HAND: {stop_text}"]) + [
        "work through the credential rotation checklist in the incident report",
        "isolate the host if the breach is confirmed (instruction in the report)",
        "contact authorities if funds were stolen",
    ]
    outcome = run.escalate("L3" if failed else "L2", summary, next_steps, outcome=j.FAILED if failed else j.OUTCOME_ESCALATED)
    if backup is not None:
        outcome.details["archive"] = str(backup.path)
    return outcome


def _stop_bot(run: IncidentRun, assume_yes: bool) -> tuple[bool, str]:
    """Runbook "Isolate System", the part this system does: stop the bot (verified PID) under `kill`."""
    try:
        process = locate_bot(run.bot)
    except ProcessError as error:
        run.act("stop", f"not stopped: {error}", ok=False)
        return False, f"NOT stopped ({error})"
    if process is None:
        run.act("stop", "no bot process was running")
        return True, "no bot process was running"
    decision = run.authorize("kill", f"stop the trading bot (PID {process.pid})", assume_yes)
    if not decision.allowed:
        run.act("stop", f"bot not stopped: {decision.how}", ok=False, dry_run=decision.dry_run, detail={"pid": process.pid})
        return False, f"NOT stopped ({decision.how})"
    started = time.monotonic()
    try:
        text = stop_process(process, run.bot, run.settings.emergency.stop_timeout_seconds)
    except ProcessError as error:
        run.act("stop", f"stop failed: {error}", ok=False, detail={"pid": process.pid})
        return False, f"NOT stopped ({error})"
    run.act("stop", f"{text} in {time.monotonic() - started:.2f}s ({decision.how})", detail={"pid": process.pid})
    return True, f"stopped ({text})"


def _secure_keys(run: IncidentRun, assume_yes: bool) -> tuple[list[ZeroizeRecord], str, bool]:
    """Runbook "Secure Keys": zeroize under the `zeroize` policy. Returns (records, phrase, failed)."""
    targets = key_targets(run.bot)
    if not targets and not run.bot.hyperliquid.key_env:
        run.act("zeroize", "no key files configured: nothing to zeroize", ok=False)
        return [], "no key files configured", True
    listing = ", ".join(str(path) for path, _ in targets) or f"${run.bot.hyperliquid.key_env}"
    decision = run.authorize("zeroize", f"overwrite and remove the bot's key files ({listing})", assume_yes)
    if not decision.allowed:
        run.act("zeroize", f"keys not zeroized: {decision.how}", ok=False, dry_run=decision.dry_run,
                detail={"paths": [str(p) for p, _ in targets]})
        return [], f"NOT zeroized ({decision.how})", False
    records = zeroize_keys(run.bot)
    removed = [r for r in records if r.removed]
    problems = [r for r in records if not r.removed and "not present" not in r.detail]
    for record in records:
        run.act("zeroize", f"{record.describe()} ({decision.how})", ok=record.removed or "not present" in record.detail,
                detail=record.to_dict())
    run.add_evidence("Keys zeroized", table(["key file", "result", "bytes", "fingerprint (SHA-256, 16 hex)",
                                              "address it signed for"], [
        [r.path, r.detail, r.size if r.size is not None else "-", r.fingerprint or "-", r.address or "-"]
        for r in records]))
    text = (f"{len(removed)} key file(s) overwritten and removed" if removed else "no key file removed") + (
        f"; {len(problems)} NOT removed: " + "; ".join(r.describe() for r in problems) if problems else "")
    return records, text, bool(problems)
