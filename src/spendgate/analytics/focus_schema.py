"""`focus:` config section: who the FOCUS export says bills whom.

Kept apart from `focus.py` so loading a config never imports the exporter
(or pyarrow). Every key is optional: the defaults make a valid dataset.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Provider kinds (config `deployments[].provider`) -> the company a FinOps tool knows.
DEFAULT_PROVIDER_NAMES: dict[str, str] = {
    "openai": "OpenAI",
    "azure_openai": "Microsoft",
    "azure": "Microsoft",
    "anthropic": "Anthropic",
    "gemini": "Google",
    "google": "Google",
    "bedrock": "AWS",
    "mistral": "Mistral AI",
    "simulator": "spendgate simulator",
}

DEFAULT_SERVICE_NAMES: dict[str, str] = {
    "openai": "OpenAI API",
    "azure_openai": "Azure OpenAI",
    "azure": "Azure OpenAI",
    "anthropic": "Claude API",
    "gemini": "Gemini API",
    "google": "Gemini API",
    "bedrock": "Amazon Bedrock",
}


class FocusConfig(BaseModel):
    """Billing-account and naming facts the ledger does not hold."""

    model_config = ConfigDict(extra="forbid")

    billing_account_id: str = "spendgate"
    billing_account_name: str = "spendgate gateway"
    billing_account_type: str = "Gateway"
    # None: each row's provider (who sends you the invoice for direct API use);
    # set it when a reseller or cloud marketplace invoices you instead.
    invoice_issuer: str | None = None
    provider_names: dict[str, str] = Field(default_factory=dict)  # provider kind -> ProviderName
    service_names: dict[str, str] = Field(default_factory=dict)  # provider kind -> ServiceName

    def provider_name(self, provider: str) -> str:
        if provider in self.provider_names:
            return self.provider_names[provider]
        return DEFAULT_PROVIDER_NAMES.get(provider) or provider or "Unknown"

    def service_name(self, provider: str) -> str:
        if provider in self.service_names:
            return self.service_names[provider]
        return DEFAULT_SERVICE_NAMES.get(provider) or f"{self.provider_name(provider)} API"
