"""The web dashboard the gateway serves at `/dashboard`: an HTML page, its static
files (Chart.js vendored, no CDN) and a read-only JSON/CSV API over the ledger."""
