"""SigV4 signing (llmkeys_proxy.providers.sigv4) checked against botocore's own signer."""

from __future__ import annotations

from datetime import UTC, datetime

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest

from llmkeys_proxy.providers import sigv4

CREDS = sigv4.AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")


def _botocore_sign(
    method: str, url: str, headers: dict[str, str], body: bytes, creds: sigv4.AwsCredentials, region: str
) -> dict[str, str]:
    request = botocore.awsrequest.AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    signer = botocore.auth.SigV4Auth(
        botocore.credentials.Credentials(creds.access_key_id, creds.secret_access_key, creds.session_token),
        "bedrock",
        region,
    )
    signer.add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize(
    ("method", "url", "headers", "body"),
    [
        (
            "POST",
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            {"Content-Type": "application/json", "Accept": "application/json"},
            b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}',
        ),
        (
            "POST",
            "http://127.0.0.1:45678/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A123%3Ainference-profile%2Fus.x/invoke",
            {"content-type": "application/json", "X-Amzn-Bedrock-Trace": "ENABLED  twice  spaced"},
            b"{}",
        ),
        ("GET", "https://example.amazonaws.com/a/./b/../c//d/?b=2&a=1&a=0", {}, b""),
        ("POST", "https://example.amazonaws.com:8443/", {"User-Agent": "x"}, b"\x00\xff"),
    ],
)
def test_signature_matches_botocore(method: str, url: str, headers: dict[str, str], body: bytes) -> None:
    expected = _botocore_sign(method, url, headers, body, CREDS, "us-west-2")
    now = datetime.strptime(expected["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    ours = sigv4.sign_headers(
        method=method, url=url, headers=headers, body=body, credentials=CREDS, region="us-west-2", now=now
    )
    assert ours["Authorization"] == expected["Authorization"]
    assert ours["X-Amz-Date"] == expected["X-Amz-Date"]
    assert "X-Amz-Security-Token" not in ours


def test_session_token_is_signed_and_sent() -> None:
    creds = sigv4.AwsCredentials("ASIAEXAMPLE", "secret", session_token="FwoGZXIvYXdzEXAMPLE")
    url = "https://bedrock-runtime.eu-central-1.amazonaws.com/model/m/converse-stream"
    headers = {"Content-Type": "application/json"}
    expected = _botocore_sign("POST", url, headers, b"{}", creds, "eu-central-1")
    now = datetime.strptime(expected["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    ours = sigv4.sign_headers(
        method="POST", url=url, headers=headers, body=b"{}", credentials=creds, region="eu-central-1", now=now
    )
    assert ours == {k: expected[k] for k in ("X-Amz-Date", "X-Amz-Security-Token", "Authorization")}
    assert "x-amz-security-token" in ours["Authorization"]


def test_aws_documented_example() -> None:
    # The GET ListUsers example from the AWS SigV4 documentation (service iam, us-east-1).
    headers = {
        "Host": "iam.amazonaws.com",
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
    }
    ours = sigv4.sign_headers(
        method="GET",
        url="https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
        headers=headers,
        body=b"",
        credentials=CREDS,
        region="us-east-1",
        service="iam",
        now=datetime(2015, 8, 30, 12, 36, 0, tzinfo=UTC),
    )
    assert ours["Authorization"].endswith(
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    )


def test_signature_depends_on_body_and_path() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    base = {"method": "POST", "headers": {}, "credentials": CREDS, "region": "us-east-1", "now": now}
    a = sigv4.sign_headers(url="https://h/model/a/invoke", body=b"{}", **base)  # type: ignore[arg-type]
    b = sigv4.sign_headers(url="https://h/model/a/invoke", body=b"{ }", **base)  # type: ignore[arg-type]
    c = sigv4.sign_headers(url="https://h/model/b/invoke", body=b"{}", **base)  # type: ignore[arg-type]
    assert len({a["Authorization"], b["Authorization"], c["Authorization"]}) == 3
    assert repr(CREDS).count("wJalr") == 0
