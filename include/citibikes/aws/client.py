"""AWS clients for the lake's account, and calls whose failures become one-line AwsErrors.

Credentials come the usual AWS way (``AWS_PROFILE``, SSO, ``AWS_ACCESS_KEY_ID``..., an instance or
task role); Airflow can hand in the session of its AWS connection instead. ``CITIBIKES_S3_ENDPOINT_URL``,
when set, sends every call there: an emulator (moto's server mode) serves S3, Glue, Athena, IAM and
STS on one port. Every call names the IAM action it needs and the object it acts on, so a refusal
says which permission is missing on what, for whom.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    SSOError,
    TokenRetrievalError,
)

from citibikes.aws.errors import ACCESS_DENIED, AwsError
from citibikes.aws.plan import Plan, plan_for
from citibikes.config import Settings
from citibikes.errors import first_line

BAD_CREDENTIALS = frozenset({"ExpiredToken", "ExpiredTokenException", "IncompleteSignature", "InvalidAccessKeyId",
                             "InvalidClientTokenId", "InvalidToken", "SignatureDoesNotMatch",
                             "UnrecognizedClientException"})
CREDENTIALS_HINT = "set AWS_PROFILE (after `aws configure` or `aws sso login`) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


@dataclass
class Aws:
    """One boto3 session in one region (optionally at an emulator's endpoint), its clients, and who
    it is (:meth:`identity` fills ``account_id`` and ``principal``)."""

    session: boto3.Session
    region: str
    endpoint_url: str | None = None
    account_id: str = ""
    principal: str = "these credentials"
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def where(self) -> str:
        """Whom the calls go to, as an error message names it."""
        return f"the AWS endpoint {self.endpoint_url}" if self.endpoint_url else f"AWS ({self.region})"

    def client(self, service: str) -> Any:
        if service not in self._clients:
            config = Config(region_name=self.region, connect_timeout=5, read_timeout=60,
                            retries={"mode": "standard", "max_attempts": 3},
                            s3={"addressing_style": "path"} if self.endpoint_url else None)
            self._clients[service] = self.session.client(service, endpoint_url=self.endpoint_url, config=config)
        return self._clients[service]

    def call(self, service: str, operation: str, action: str, target: str, *,
             absent: tuple[str, ...] = (), **params: Any) -> dict[str, Any] | None:
        """``client.<operation>(**params)``; None when AWS answers one of the ``absent`` error codes
        (the object does not exist); any other failure is an AwsError naming ``action`` on ``target``."""
        try:
            return getattr(self.client(service), operation)(**params)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in absent:
                return None
            raise self.failure(exc, action, target) from None
        except BotoCoreError as exc:
            raise self.failure(exc, action, target) from None

    def pages(self, service: str, operation: str, action: str, target: str, **params: Any) -> list[dict[str, Any]]:
        """Every page of a paginated operation, failures as in :meth:`call`."""
        try:
            return list(self.client(service).get_paginator(operation).paginate(**params))
        except (ClientError, BotoCoreError) as exc:
            raise self.failure(exc, action, target) from None

    def identity(self) -> Aws:
        """Ask STS who these credentials are (any valid credentials may); fills account and principal."""
        answer = self.call("sts", "get_caller_identity", "sts:GetCallerIdentity", "")
        self.account_id, self.principal = answer["Account"], answer["Arn"]
        return self

    def failure(self, exc: Exception, action: str, target: str) -> AwsError:
        """A boto3 failure as one line: the cause, ``action`` on ``target`` (if any), and the fix."""
        what = f"{action} on {target}" if target else action
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return AwsError(f"no AWS credentials found; {CREDENTIALS_HINT}")
        if isinstance(exc, (SSOError, TokenRetrievalError)):
            return AwsError(f"the AWS credentials cannot be loaded ({first_line(exc)}); run `aws sso login` "
                            "or fix AWS_PROFILE")
        if isinstance(exc, (ConnectionError, HTTPClientError)):
            return AwsError(f"cannot reach {self.where} ({what}); check the network, or CITIBIKES_S3_ENDPOINT_URL "
                            "(unset it for AWS itself; start the emulator it points at)")
        if not isinstance(exc, ClientError):
            return AwsError(f"{what} failed: {first_line(exc)}; check the AWS settings "
                            "(CITIBIKES_S3_REGION, CITIBIKES_S3_ENDPOINT_URL, AWS_PROFILE)")
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message") or "").strip().split("\n")[0]
        if code in ACCESS_DENIED:
            return AwsError(f"{self.where} denied {what} to {self.principal}; grant it that permission "
                            "or run the command with an administrator's credentials (README, On AWS)", code=code)
        if code in BAD_CREDENTIALS:
            return AwsError(f"{self.where} rejected the credentials ({code}, {what}); refresh them or "
                            f"{CREDENTIALS_HINT}", code=code)
        return AwsError(f"{what} failed at {self.where}: {code}{': ' + message if message else ''}; "
                        "`citibikes aws status` shows what is missing or differs", code=code)


def aws_from_settings(settings: Settings, session: boto3.Session | None = None) -> Aws:
    """An :class:`Aws` in the lake's region (``CITIBIKES_S3_REGION``) at ``CITIBIKES_S3_ENDPOINT_URL`` if set."""
    try:
        session = session or boto3.Session()
    except BotoCoreError as exc:  # AWS_PROFILE names no profile
        raise AwsError(f"cannot load the AWS configuration: {first_line(exc)}; fix AWS_PROFILE") from None
    return Aws(session, settings.s3_region, settings.s3_endpoint_url)


def connect(settings: Settings, session: boto3.Session | None = None) -> tuple[Aws, Plan]:
    """The lake's plan (checked first: the lake must be on S3) and an :class:`Aws` that knows its account."""
    plan = plan_for(settings.lake_uri, settings.s3_region, "")
    aws = aws_from_settings(settings, session).identity()
    return aws, replace(plan, account_id=aws.account_id)
