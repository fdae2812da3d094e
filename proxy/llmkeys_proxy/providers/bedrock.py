"""Adapter for Amazon Bedrock Runtime (`bedrock` credentials); built by `providers.adapter_class`.

Routes `/model/<id>/converse|converse-stream|invoke|invoke-with-response-stream|count-tokens` to
`https://bedrock-runtime.<region>.amazonaws.com` (or `base_url`), the model id percent-encoded as
AWS SDKs do (ids, inference profiles and ARNs alike). Authentication: with an access key pair in
the credential's Secret (`aws_access_key_id`, `aws_secret_access_key`, optional
`aws_session_token`) every request is SigV4-signed (`sigv4.sign_headers`) over its final URL and
body; otherwise the Secret's key is a Bedrock API key sent as `Authorization: Bearer`. Usage
(Converse `usage`, InvokeModel's `X-Amzn-Bedrock-*-Token-Count` headers, the event streams'
`metadata` / `amazon-bedrock-invocationMetrics`) is the wire format's: `apis.bedrock`.
"""

from __future__ import annotations

import urllib.parse
from typing import ClassVar

import yarl

from llmkeys_proxy import config, settings
from llmkeys_proxy.apis import base as apis_base
from llmkeys_proxy.providers import base, sigv4

OPERATIONS = frozenset(
    {"converse", "converse-stream", "invoke", "invoke-with-response-stream", "count-tokens"}
)
SIGNING_SERVICE = "bedrock"
#: Client headers never sent upstream: the proxy adds its own date, token and signature.
_DROPPED_PREFIXES = ("x-amz-", "authorization")


def default_base_url(region: str) -> str:
    return f"https://bedrock-runtime.{region}.amazonaws.com"


class BedrockAdapter(base.HttpAdapter):
    """Forwards Bedrock Runtime requests, SigV4-signed or with a Bedrock API key."""

    apis: ClassVar[frozenset[apis_base.ApiFormat]] = frozenset({"bedrock-converse", "bedrock-invoke"})

    def __init__(self, entry: config.ProviderEntry, proxy_settings: settings.ProxySettings) -> None:
        super().__init__(entry, proxy_settings)
        if not entry.region and not entry.base_url:
            raise ValueError(f"bedrock credential {entry.id} names no region (spec.bedrock.region)")
        self._region = entry.region or "us-east-1"
        self._root = (entry.base_url or default_base_url(self._region)).rstrip("/")
        fields = entry.secret_fields
        self._aws: sigv4.AwsCredentials | None = None
        if fields.get("aws_access_key_id") and fields.get("aws_secret_access_key"):
            self._aws = sigv4.AwsCredentials(
                fields["aws_access_key_id"], fields["aws_secret_access_key"], fields.get("aws_session_token")
            )
        elif not entry.api_key:
            raise ValueError(f"bedrock credential {entry.id} has neither an access key pair nor an API key")

    def supports(self, api: apis_base.ApiFormat, operation: str) -> bool:
        return api in self.apis and operation in OPERATIONS

    def url(self, operation: str, model_id: str) -> yarl.URL:
        """Upstream URL with the model id percent-encoded as the AWS SDKs send it (`:` as `%3A`,
        `/` as `%2F`), kept encoded so the bytes on the wire are the bytes signed."""
        quoted = urllib.parse.quote(model_id, safe="-_.~")
        return yarl.URL(f"{self._root}/model/{quoted}/{operation}", encoded=True)

    async def prepare(self, call: base.UpstreamCall) -> base.PreparedRequest:
        headers = {k: v for k, v in call.headers.items() if not k.lower().startswith(_DROPPED_PREFIXES)}
        url = self.url(call.operation, call.upstream_model)
        if self._aws is None:
            headers["Authorization"] = f"Bearer {self.entry.api_key}"
            return base.PreparedRequest("POST", url, headers, call.body)
        # Every header sent is signed, as botocore does (sigv4 leaves out the few a hop may
        # rewrite); Host is set explicitly so the signed value and the sent one cannot differ.
        headers = {k: v for k, v in headers.items() if k.lower() != "host"}
        headers["Host"] = url.host_port_subcomponent or ""
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        headers.update(
            sigv4.sign_headers(
                method="POST",
                url=str(url),
                headers=headers,
                body=call.body,
                credentials=self._aws,
                region=self._region,
                service=SIGNING_SERVICE,
            )
        )
        return base.PreparedRequest("POST", url, headers, call.body)
