"""Alerts: rules over the ledger, judged on a schedule and on each event,
de-duplicated with cooldowns, state kept in ledger side tables, sent to
webhooks, Slack, email or the log. See docs/alerts.md.

Import the engine from `spendgate.alerts.engine`: the config loads
`spendgate.alerts.schema` and must not pull in the engine's HTTP and SMTP
clients.
"""
