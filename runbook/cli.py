"""`runbook ...`: run any runbook flow by hand, drive the sandbox, read the journal.

Exit codes: 0 done (resolved, or nothing was wrong), 1 the flow finished but the problem remains
(escalated, not approved, failed), 2 bad usage or configuration.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from runbook.alerts import CATALOGUE
from runbook.settings import ConfigError, config_path, dump_redacted, load_settings

app = typer.Typer(help="Runbook automation for a Hyperliquid trading bot.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
sandbox_app = typer.Typer(help="The embedded sandbox: a simulated bot, a local Hyperliquid API and Slack API.",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
analyze_app = typer.Typer(help="Analyse trading data.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")
report_app = typer.Typer(help="Render a report now: the daily trading summary or the weekly alert analysis (PDF).",
                         no_args_is_help=True)
app.add_typer(report_app, name="report")

ConfigOption = typer.Option(None, "--config", "-c", help="Runbook TOML (default: $RUNBOOK_CONFIG or ./runbook.toml)")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of text.")
SandboxDir = typer.Option(Path(".sandbox"), "--dir", help="Sandbox folder.")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else text)


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _fail(f"--param takes key=value, not {pair!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


@app.command()
def run(
    name: str = typer.Argument(..., help="Flow name, e.g. crash-recovery (see `runbook list`)."),
    bot: Optional[str] = typer.Option(None, "--bot", "-b", help="Which configured bot."),
    config: Optional[Path] = ConfigOption,
    param: list[str] = typer.Option([], "--param", "-p", help="Extra flow parameter key=value (repeatable)."),
    as_json: bool = JsonOption,
    yes: bool = typer.Option(False, "--yes", help="Approve the flow's destructive steps now (e.g. liquidation, "
                                                  "zeroize) instead of pausing for the form; never overrides dry-run."),
    local: bool = typer.Option(False, "--local", help="Run the flow in this process even when a `runbook serve` "
                                                      "serves it."),
    timeout: float = typer.Option(3600.0, "--timeout", min=1, help="Through `runbook serve`: give up waiting for "
                                                                 "the run after this many seconds (it goes on)."),
) -> None:
    """Run one runbook flow now, on the Prefect server in PREFECT_API_URL: through `runbook serve`'s warm
    runner when it serves NAME, else in this process."""
    if name not in CATALOGUE:
        raise _fail(f"unknown flow {name!r}; known: {', '.join(CATALOGUE)}")
    path = config_path(config).resolve()
    try:
        settings = load_settings(path)
        if bot is not None:
            settings.bot(bot)
    except ConfigError as error:
        raise _fail(str(error))
    from flows import FLOWS, load

    if name not in FLOWS:
        raise _fail(f"{name!r} has no automated flow yet (the alert is in the catalogue; respond by hand)")
    params = {"bot": bot, "config": str(path), **_parse_params(param)}
    from runbook import served

    api = None if local else served.api_url()
    deployment = served.served_deployment(api, name) if api else None
    if deployment is not None:
        if yes:
            if not served.accepts(deployment, "assume_yes"):
                raise _fail(f"{name} has no approvals to answer with --yes")
            params["assume_yes"] = True
        _run_served(api, deployment, params, settings, as_json, timeout)
    if yes:
        import inspect

        if "assume_yes" not in inspect.signature(load(name).fn).parameters:
            raise _fail(f"{name} has no approvals to answer with --yes")
        params["assume_yes"] = True
    from prefect.exceptions import ParameterTypeError

    try:
        outcome = load(name)(**params)
    except ParameterTypeError as error:
        raise _fail(str(error))
    except ConfigError as error:
        raise _fail(str(error))
    except Exception as error:  # the flow run failed: its logs are in the Prefect UI
        typer.echo(f"error: flow {name} failed: {type(error).__name__}: {error}", err=True)
        raise typer.Exit(1)
    if not hasattr(outcome, "incident_id"):  # a scheduled report (reports.ReportOutcome): no incident
        _emit(outcome.to_dict(), as_json, outcome.describe())
        raise typer.Exit(1 if outcome.problem_remains else 0)
    data = outcome.to_dict()
    _emit(data, as_json, "\n".join([
        f"incident #{outcome.incident_id} ({outcome.alert}, bot {outcome.bot}): {outcome.status.upper()} — {outcome.outcome}",
        f"  {outcome.summary}",
        f"  incident report: {outcome.report_path}",
        *[f"  {key}: {value}" for key, value in getattr(outcome, "details", {}).items()],
        *([f"  flow run: {outcome.ui_url}"] if outcome.ui_url else []),
    ]))
    raise typer.Exit(1 if outcome.problem_remains else 0)


def _run_served(api: str, deployment: dict[str, Any], params: dict[str, Any], settings: Any, as_json: bool,
                timeout: float) -> None:
    """`runbook run` through `runbook serve`: create the deployment's run, wait for it, print its incident."""
    from runbook import served

    name = deployment["name"]
    try:
        run_id = served.start_run(api, deployment, params)
        typer.echo(f"flow run {run_id} of {name} created; `runbook serve` runs it", err=True)
        finished = served.wait_run(api, run_id, timeout, on_pause=lambda rid: typer.echo(
            f"paused for approval: answer the form in the Prefect UI or `runbook approve {rid}`", err=True))
    except served.ServedError as error:
        raise _fail(str(error), 2 if error.bad_input else 1)
    if finished.state != "COMPLETED":
        typer.echo(f"error: flow {name} {finished.state.lower()}: {finished.message}", err=True)
        raise typer.Exit(1)
    from runbook.journal import Journal

    incident = Journal(settings.journal_url).for_flow_run(run_id)
    if incident is None:  # a scheduled report: no incident
        data = {"flow_run_id": run_id, "state": finished.state, "message": finished.message, "ui_url": finished.ui_url}
        _emit(data, as_json, f"flow run {run_id}: {finished.state} {finished.message}".rstrip())
        raise typer.Exit(0)
    report = settings.reports_dir / "incidents" / f"incident-{incident.id}.md"
    data = {"incident_id": incident.id, "alert": incident.alert, "bot": incident.bot, "status": incident.status,
            "outcome": incident.outcome or "", "summary": incident.summary, "report_path": str(report),
            "flow_run_id": run_id, "ui_url": finished.ui_url, "actions": [a.description for a in incident.actions]}
    _emit(data, as_json, "\n".join([
        f"incident #{incident.id} ({incident.alert}, bot {incident.bot}): {incident.status.upper()} — {incident.outcome}",
        f"  {incident.summary}",
        f"  incident report: {report}",
        *[f"  action: {a.description}" for a in incident.actions],
        *([f"  flow run: {finished.ui_url}"] if finished.ui_url else []),
    ]))
    from runbook.journal import RESOLVED

    raise typer.Exit(0 if incident.status == RESOLVED else 1)


@app.command()
def serve(
    config: Optional[Path] = ConfigOption,
    watch: bool = typer.Option(True, "--watch/--no-watch", help="Run the watcher."),
    intake: bool = typer.Option(True, "--intake/--no-intake", help="Run the webhook intake (needs a token)."),
) -> None:
    """Register and serve every deployment (with triggers), plus the watcher and the intake. Ctrl-C stops all."""
    path = config_path(config).resolve()
    try:
        load_settings(path)
    except ConfigError as error:
        raise _fail(str(error))
    from runbook.serve import serve_all

    try:
        serve_all(path, watch=watch, intake=intake)
    except KeyboardInterrupt:
        pass


@app.command()
def deploy(
    pool: str = typer.Option(..., "--pool", help="Process work pool (`prefect work-pool create NAME --type process`)."),
    config: Optional[Path] = ConfigOption,
    queue: Optional[str] = typer.Option(None, "--queue", help="Work queue of the pool (one per bot host in a fleet)."),
    suffix: Optional[str] = typer.Option(None, "--suffix", help="Appended to each deployment's name "
                                         "(crash-recovery-SUFFIX): one set per bot host."),
    only: list[str] = typer.Option([], "--only", help="Register only this deployment (repeatable)."),
    as_json: bool = JsonOption,
) -> None:
    """Register the deployments (triggers, schedules) to a work pool; workers on other hosts run them
    (`prefect worker start --pool NAME`). See docs/scaling.md."""
    path = config_path(config).resolve()
    try:
        load_settings(path)
    except ConfigError as error:
        raise _fail(str(error))
    from runbook.deploy import DeployError, deploy_to_pool

    try:
        registered = deploy_to_pool(path, pool, queue=queue, suffix=suffix, only=only or None)
    except DeployError as error:
        raise _fail(str(error))
    _emit([r.to_dict() for r in registered], as_json, "\n".join(
        [f"{len(registered)} deployment(s) registered to work pool {pool!r}"
         + (f", queue {queue!r}" if queue else "") + f"; triggers for bot(s) {', '.join(registered[0].bots)}:"
         if registered else "nothing registered"]
        + [f"  {r.flow}/{r.name}  ({r.triggers} trigger(s), {r.schedules} schedule(s))" for r in registered]
        + (["start a worker on each host that runs them: prefect worker start --pool " + pool
            + (f" --work-queue {queue}" if queue else "")] if registered else [])))


@app.command()
def watch(
    config: Optional[Path] = ConfigOption,
    once: bool = typer.Option(False, "--once", help="Poll once, print what fired, exit."),
    as_json: bool = JsonOption,
) -> None:
    """Poll every bot and fire alerts (part of `runbook serve`; standalone here)."""
    import logging
    import threading

    from flows import FLOWS
    from runbook.journal import Journal
    from runbook.watcher import Watcher

    try:
        settings = load_settings(config)
    except ConfigError as error:
        raise _fail(str(error))
    watcher = Watcher(settings, Journal(settings.journal_url), set(FLOWS))
    if once:
        watcher.poll_once()  # the first look sets log cursors and latency baselines
        fired = watcher.poll_once()
        rows = [f.__dict__ for f in fired]
        _emit(rows, as_json, "\n".join(f.describe() for f in fired) or "nothing fired")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        watcher.run(threading.Event())
    except KeyboardInterrupt:
        pass


@app.command("list")
def list_alerts(as_json: bool = JsonOption) -> None:
    """The alert catalogue: every runbook alert, its severity, target and flow."""
    from flows import FLOWS

    automated = set(FLOWS)
    rows = [
        {"name": a.key, "title": a.title, "severity": a.severity.value,
         "response_target_seconds": a.response_target_seconds, "automated": a.key in automated}
        for a in CATALOGUE.values()
    ]
    text = "\n".join(
        f"{r['name']:24} {r['severity']:9} {'auto' if r['automated'] else '-':5} {r['title']}" for r in rows
    )
    _emit(rows, as_json, text)


@app.command()
def incidents(
    open_only: bool = typer.Option(False, "--open", help="Only unresolved incidents."),
    alert: Optional[str] = typer.Option(None, "--alert"),
    bot: Optional[str] = typer.Option(None, "--bot"),
    limit: int = typer.Option(50, "--limit"),
    config: Optional[Path] = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """The incident journal, newest first."""
    from runbook.journal import Journal, JournalError

    try:
        journal = Journal(load_settings(config).journal_url)
        found = journal.incidents(open_only=open_only, alert=alert, bot=bot, limit=limit)
    except (ConfigError, JournalError) as error:
        raise _fail(str(error))
    rows = [incident.as_dict() for incident in found]
    text = "\n".join(
        f"#{r['id']:<5} {r['fired_at']}  {r['severity']:9} {r['alert']:22} {r['bot']:12} {r['status']:9} "
        f"{r['outcome'] or '-':16} {r['summary'][:80]}"
        for r in rows
    ) or "no incidents"
    _emit(rows, as_json, text)


@app.command()
def resolve(
    incident_id: int = typer.Argument(..., help="The incident to close."),
    outcome: str = typer.Option("resolved-manually", "--outcome",
                                help="resolved-manually, false-positive, auto-resolved, escalated or failed."),
    note: str = typer.Option("", "--note", help="What was done; kept as the incident's summary."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Close an incident by hand (this also releases a bot a remediation stopped on purpose)."""
    from runbook.journal import OUTCOMES, Journal, JournalError

    if outcome not in OUTCOMES:
        raise _fail(f"unknown outcome {outcome!r}; one of: {', '.join(OUTCOMES)}")
    try:
        journal = Journal(load_settings(config).journal_url)
        incident = journal.get(incident_id)
        journal.resolve(incident_id, outcome, note or f"closed by hand ({outcome})")
    except (ConfigError, JournalError) as error:
        raise _fail(str(error))
    typer.echo(f"incident #{incident_id} ({incident.alert} on {incident.bot}) resolved: {outcome}")


@app.command("check-config")
def check_config(config: Optional[Path] = ConfigOption, as_json: bool = JsonOption) -> None:
    """Validate the configuration; print it with secrets hidden."""
    try:
        settings = load_settings(config)
    except ConfigError as error:
        raise _fail(str(error))
    data = dump_redacted(settings)
    _emit(data, as_json, f"{config_path(config)}: OK — bots: {', '.join(settings.bots)}; journal {settings.journal_url}")


@app.command()
def approve(
    run_id: str = typer.Argument(..., help="The paused flow run's id."),
    reject: bool = typer.Option(False, "--reject", help="Reject instead of approving."),
    note: str = typer.Option("", "--note", help="Why; kept with the decision."),
) -> None:
    """Answer a flow run paused for approval (same as the form in the Prefect UI)."""
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    answer = {"approve": not reject, "note": note}
    for attempt in range(10):
        try:
            resume_flow_run(run_id, run_input=answer)
            typer.echo(f"{'rejected' if reject else 'approved'}: flow run {run_id}")
            return
        except ObjectNotFound:
            raise _fail(f"no flow run {run_id}")
        except Exception as error:
            # Right after a pause the run's input schema may not be stored yet: try again shortly.
            if "schema" in str(error).lower() and attempt < 9:
                time.sleep(0.5)
                continue
            raise _fail(f"cannot resume {run_id}: {error}", 1)


@analyze_app.command("trades")
def analyze_trades(
    fills: str = typer.Option(..., "--fills", help="JSON file of fills as the info API returns them; - for stdin."),
    start_balance: float = typer.Option(10000.0, "--start-balance", help="Equity at the start of the first fill's day."),
    as_json: bool = JsonOption,
) -> None:
    """Trade metrics (win rate, profit factor, drawdown, Sharpe, ...) from a file of fills."""
    from reports.trades import analyze_trades_command

    code, output = analyze_trades_command(fills, start_balance, as_json)
    typer.echo(output, err=code != 0)
    raise typer.Exit(code)


# -- report -------------------------------------------------------------------------------------


def _optional_settings(config: Optional[Path]) -> Any:
    """The configuration when one is given or ./runbook.toml exists; None otherwise (file-only reports)."""
    path = config_path(config)
    if config is None and not path.is_file():
        return None
    try:
        return load_settings(path)
    except ConfigError as error:
        raise _fail(str(error))


@report_app.command("daily")
def report_daily(
    date: Optional[str] = typer.Option(None, "--date", help="The day, YYYY-MM-DD in reports.timezone (default: "
                                                            "yesterday; with --fills: the last fill's day)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the PDF (default: reports_dir/daily; "
                                                           "with --fills and no configuration: the current folder)."),
    fills: Optional[str] = typer.Option(None, "--fills", help="Render from this file of fills (as `runbook analyze "
                                                              "trades` reads it; - for stdin) instead of the exchange."),
    start_balance: Optional[float] = typer.Option(None, "--start-balance",
                                                  help="With --fills: the equity at the start of the day."),
    bot: Optional[str] = typer.Option(None, "--bot", "-b", help="Which configured bot."),
    config: Optional[Path] = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """The daily trading summary of one day as a PDF: from the exchange, or from a file of fills."""
    from reports.daily import daily_from_exchange, daily_from_file, parse_day

    try:
        day = parse_day(date) if date else None
    except ValueError as error:
        raise _fail(str(error))
    if fills is not None:
        if start_balance is None:
            raise _fail("--fills needs --start-balance (the equity at the start of the day)")
        settings = _optional_settings(config)
        folder = out or (settings.reports_dir / "daily" if settings else Path("."))
        code, output = daily_from_file(fills, day, start_balance, folder,
                                       tz=settings.reports.timezone if settings else "UTC", bot=bot or "",
                                       as_json=as_json)
    else:
        if start_balance is not None:
            raise _fail("--start-balance goes with --fills (from the exchange, the account's value history is used)")
        try:
            settings = load_settings(config)
        except ConfigError as error:
            raise _fail(str(error))
        code, output = daily_from_exchange(settings, bot, day, out, as_json)
    typer.echo(output, err=code != 0)
    raise typer.Exit(code)


@report_app.command("weekly")
def report_weekly(
    period: Optional[str] = typer.Option(None, "--period", help="The window: 7d, 24h, 30d, 2w ... (default: "
                                                                "reports.weekly_period, 7d)."),
    end: Optional[str] = typer.Option(None, "--end", help="Where the window ends: YYYY-MM-DD (00:00 UTC) or an ISO "
                                                          "8601 time (default: now)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the PDF (default: reports_dir/weekly; with "
                                                           "--from-file and no configuration: the current folder)."),
    from_file: Optional[str] = typer.Option(None, "--from-file", help="Analyse this alert history instead of the "
                                            "journal: JSON lines or a JSON list of incidents with the fields of "
                                            "`runbook incidents --json`; - for stdin."),
    bot: Optional[str] = typer.Option(None, "--bot", "-b", help="Only this bot's incidents."),
    config: Optional[Path] = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """The weekly alert-pattern analysis (MTTR, false positives, uptime, MTBF, RTO...) as a PDF."""
    from datetime import timedelta

    from reports.weekly import parse_end, weekly_command
    from runbook.journal import JournalError
    from runbook.settings import parse_period

    settings = _optional_settings(config) if from_file else None
    if not from_file:
        try:
            settings = load_settings(config)
        except ConfigError as error:
            raise _fail(str(error))
    try:
        span = parse_period(period or (settings.reports.weekly_period if settings else "7d"))
        end_at = parse_end(end)
    except ValueError as error:
        raise _fail(f"--period: {error}" if "period" in str(error) else str(error))
    folder = out or (settings.reports_dir / "weekly" if settings else Path("."))
    flap = timedelta(minutes=settings.reports.flap_window_minutes) if settings else timedelta(hours=1)
    try:
        code, output = weekly_command(journal_url=settings.journal_url if settings else None, from_file=from_file,
                                      period=span, end=end_at, out=folder, bot=bot, flap_window=flap, as_json=as_json)
    except JournalError as error:
        raise _fail(str(error))
    typer.echo(output, err=code != 0)
    raise typer.Exit(code)


# -- sandbox ------------------------------------------------------------------------------------


@sandbox_app.command("up")
def sandbox_up(directory: Path = SandboxDir, seed: int = typer.Option(7, "--seed"), as_json: bool = JsonOption) -> None:
    """Start the sandbox bot, exchange and Slack on free loopback ports; write DIR/runbook.toml."""
    from sandbox.manager import SandboxError, up

    try:
        info = up(directory.resolve(), seed=seed)
    except SandboxError as error:
        raise _fail(str(error), 1)
    data = info if isinstance(info, dict) else getattr(info, "__dict__", {"info": str(info)})
    _emit(data, as_json, "\n".join(f"{k}: {v}" for k, v in data.items()))


@sandbox_app.command("down")
def sandbox_down(directory: Path = SandboxDir) -> None:
    """Stop every sandbox process (by its recorded, verified PID)."""
    from sandbox.manager import SandboxError, down

    try:
        for line in down(directory.resolve()):
            typer.echo(line)
    except SandboxError as error:
        raise _fail(str(error), 1)


@sandbox_app.command("status")
def sandbox_status(directory: Path = SandboxDir, as_json: bool = JsonOption) -> None:
    """Each sandbox component: PID, alive, URL, answering, active faults."""
    from sandbox.manager import SandboxError, status

    try:
        data = status(directory.resolve())
    except SandboxError as error:
        raise _fail(str(error), 1)
    _emit(data, as_json, json.dumps(data, indent=2, default=str))


@sandbox_app.command("fault")
def sandbox_fault(
    kind: str = typer.Argument(..., help="crash, hang, websocket, stop-loss, daily-loss, auth, low-balance, "
                                         "latency, memory, no-start, ... or clear"),
    directory: Path = SandboxDir,
    param: list[str] = typer.Option([], "--param", "-p", help="Fault parameter key=value."),
) -> None:
    """Inject a fault into the running sandbox (`clear` undoes them all)."""
    from sandbox.manager import SandboxError, fault

    try:
        typer.echo(fault(directory.resolve(), kind, _parse_params(param) or None))
    except SandboxError as error:
        raise _fail(str(error))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
