"""Evidence backup (RUNBOOK.md "Emergency Procedures", step "Preserve Evidence"), as a flow of its own.

The runbook's `tar -czf emergency_backup_$(date +%Y%m%d_%H%M%S).tar.gz logs/ data/ config/`, startable by
an engineer at any time (`runbook run emergency-backup` prints the archive's path): the bot's logs, data
and config in a timestamped tar.gz with a MANIFEST.json (path, size, SHA-256 of every file), written
under a temporary name, verified by reading it back and only then given its name; key files are never in
it. The system-failure and security-breach flows run the same task.
"""

from __future__ import annotations

from prefect import flow

from runbook import journal as j
from tasks.evidence import BackupError, backup_evidence, backup_folder
from tasks.incident import IncidentRun, Outcome

ALERT = "emergency-backup"


@flow(name="emergency-backup",
      description="Runbook: Preserve Evidence — archive the bot's logs, data and config with a verified manifest.")
def emergency_backup(bot: str | None = None, config: str | None = None, incident_id: int | None = None) -> Outcome:
    """Archive the bot's logs/, data/ and config/ now.

    Args:
        bot: which configured bot (may be omitted when only one is configured)
        config: path of the runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)
        incident_id: the journal incident this run answers; a new one otherwise
    """
    run = IncidentRun.open(ALERT, bot, config, incident_id)
    run.start_response()
    folder = backup_folder(run.settings.backup, run.bot_name)
    run.tell("OPEN", "Evidence backup requested", [f"archive logs, data and config into {folder}"])
    try:
        result = backup_evidence(run.bot_name, run.bot, run.settings.backup)
    except BackupError as error:
        run.act("backup", f"evidence backup failed: {error}", ok=False)
        return run.escalate("L1", f"The evidence backup failed: {error}",
                            ["fix the cause named above, then run `runbook run emergency-backup` again",
                             "or copy the bot's logs, data and config by hand (without its key files)"],
                            outcome=j.FAILED)
    run.act("backup", f"evidence archived: {result.summary()}", detail=result.to_dict())
    run.add_evidence("Evidence archive", result.markdown())
    outcome = run.resolve(j.AUTO_RESOLVED, f"Evidence archived to {result.path} ({result.files} files, "
                                           f"manifest verified).")
    outcome.details["archive"] = str(result.path)
    return outcome
