"""The top floor: what an operator or a service manager runs (CLI, serve, watcher, intake, demo, deploy,
the local Prefect server and PostgreSQL helpers). It may import every package below it; nothing imports it."""
