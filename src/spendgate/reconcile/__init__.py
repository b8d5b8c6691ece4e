"""Reconciliation: a provider's own usage/cost export against the ledger.

Traffic that reaches a provider without passing the gateway (a hard-coded
key, a forgotten batch job) never shows up in the ledger; the provider's bill
is the only place it appears. Importers (`openai.py`, `anthropic.py`,
`csvfile.py`) turn each export into per (day, model) `ProviderFigure`s;
`compare.py` joins them with the ledger and flags the gaps.
"""
