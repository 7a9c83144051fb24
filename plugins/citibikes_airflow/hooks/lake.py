"""Lake hook: the ``citibikes_lake`` connection -> an open :class:`citibikes.lake.Lake`.

Two connection types are understood:

* ``fs``  - a local folder: ``{"conn_type": "fs", "extra": {"path": "/data/lake"}}``
* ``aws`` - S3 or any S3-compatible store; credentials come through the Amazon provider's
  ``AwsBaseHook`` (keys, profiles, roles), the location from the extra:
  ``{"conn_type": "aws", "extra": {"lake_uri": "s3://bucket/prefix", "endpoint_url": "...", "region_name": "..."}}``
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import BaseHook

from citibikes.lake import Lake, LakeError, open_lake

if TYPE_CHECKING:
    from citibikes.aws.client import Aws
    from citibikes.catalog import S3Access


class LakeHook(BaseHook):
    conn_name_attr = "lake_conn_id"
    default_conn_name = "citibikes_lake"
    conn_type = "citibikes_lake"
    hook_name = "citibikes lake"

    def __init__(self, lake_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.lake_conn_id = lake_conn_id

    def get_lake(self) -> Lake:
        conn = self.get_connection(self.lake_conn_id)
        extra = conn.extra_dejson
        if conn.conn_type == "fs":
            path = extra.get("path")
            if not path:
                raise LakeError(f"connection {self.lake_conn_id!r} (fs) has no extra.path; set it to the lake folder")
            return open_lake(path)
        if conn.conn_type == "aws":
            uri = extra.get("lake_uri")
            if not uri:
                raise LakeError(f"connection {self.lake_conn_id!r} (aws) has no extra.lake_uri; set it to s3://bucket/prefix")
            return open_lake(uri, **self.s3_settings())
        raise LakeError(
            f"connection {self.lake_conn_id!r} has type {conn.conn_type!r}; use 'fs' (a folder) or 'aws' (S3)"
        )

    def s3_settings(self) -> dict[str, str | None]:
        """Endpoint, region and credentials of an ``aws`` lake connection (``open_lake``'s keyword arguments),
        through the Amazon provider's ``AwsBaseHook`` (keys, profiles, roles)."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        extra = self.get_connection(self.lake_conn_id).extra_dejson
        aws = AwsBaseHook(aws_conn_id=self.lake_conn_id, client_type="s3")
        credentials = aws.get_credentials()
        return {
            "endpoint_url": aws.conn_config.endpoint_url,
            "region": aws.conn_region_name or extra.get("region_name"),
            "access_key": credentials.access_key,
            "secret_key": credentials.secret_key,
            "session_token": credentials.token,
        }

    def aws(self) -> Aws:
        """The ``aws`` connection's session (the Amazon provider's ``AwsBaseHook``: keys, profiles, roles)
        in the lake's region and at its endpoint: what the Glue calls go through."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        from citibikes.aws.client import Aws

        options = self.s3_settings()
        region = options["region"] or "us-east-1"
        session = AwsBaseHook(aws_conn_id=self.lake_conn_id, client_type="glue").get_session(region_name=region)
        return Aws(session, region, options["endpoint_url"])

    def s3_access(self) -> S3Access | None:
        """How DuckDB reaches the lake's files (None for a folder lake): what a DuckDB catalog of an S3
        lake needs to create and to query its views."""
        from citibikes.catalog import S3Access

        if self.get_connection(self.lake_conn_id).conn_type != "aws":
            return None
        options = self.s3_settings()
        return S3Access(region=options.pop("region") or "us-east-1", **options)
